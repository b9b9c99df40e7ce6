//! The properties the body and digest fuzz targets check. The main package's
//! `tests/fuzz_checks.rs` runs the same functions on mutated fixtures (proptest), so they
//! are exercised, and kept compiling, without libFuzzer or a nightly toolchain.
//!
//! Each takes any bytes: nothing may panic, and whatever parses must survive printing: the
//! printed text parses, and the value it parses to prints and parses back to itself. (The
//! first print may normalize: control characters become spaces, which the parser then trims,
//! a folded line reads as the space it stands for; after that nothing may change.)

// Each fuzz target calls one of these.
#![allow(dead_code)]

use busylamp::sip::body::{dialog_info, mwi, pidf, watcherinfo};
use busylamp::sip::digest;
use std::fmt::Debug;

/// `first` printed and parsed back once (normalized), then again: the second round changes
/// nothing.
fn survives_printing<T: PartialEq + Debug>(
    kind: &str,
    first: T,
    print: impl Fn(&T) -> String,
    parse: impl Fn(&[u8]) -> Option<T>,
) {
    let printed = print(&first);
    let normal = parse(printed.as_bytes())
        .unwrap_or_else(|| panic!("printed {kind} does not parse:\n{printed}\nfrom {first:?}"));
    let again = print(&normal);
    let reparsed = parse(again.as_bytes())
        .unwrap_or_else(|| panic!("printed {kind} does not parse:\n{again}\nfrom {normal:?}"));
    assert_eq!(reparsed, normal, "{kind} changed by printing:\n{again}");
}

/// dialog-info (RFC 4235), printed with the BLA line parameters.
pub fn dialog_info(data: &[u8]) {
    if let Ok(doc) = dialog_info::parse(data) {
        survives_printing(
            "dialog-info",
            doc,
            |d| d.render(true),
            |b| dialog_info::parse(b).ok(),
        );
    }
}

/// PIDF (RFC 3863), printed as the one-document merge we send; the XPIDF form (old phones)
/// never panics.
pub fn pidf(data: &[u8]) {
    if let Ok(doc) = pidf::parse(data) {
        let entity = doc.entity().to_string();
        let _ = pidf::xpidf(&entity, std::slice::from_ref(&doc));
        survives_printing(
            "PIDF",
            doc,
            |d| pidf::merge(&entity, std::slice::from_ref(d)),
            |b| pidf::parse(b).ok(),
        );
    }
}

/// watcherinfo (RFC 3858).
pub fn watcherinfo(data: &[u8]) {
    if let Ok(info) = watcherinfo::parse(data) {
        survives_printing(
            "watcherinfo",
            info,
            |w| w.render(),
            |b| watcherinfo::parse(b).ok(),
        );
    }
}

/// message-summary (RFC 3842).
pub fn message_summary(data: &[u8]) {
    if let Ok(summary) = mwi::parse(data) {
        survives_printing(
            "message-summary",
            summary,
            |m| m.render(),
            |b| mwi::parse(b).ok(),
        );
    }
}

/// Digest header values (RFC 7616): `Authorization` parsing never panics; a parsed
/// challenge survives printing.
pub fn digest_header(data: &[u8]) {
    let Ok(value) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(creds) = digest::parse_credentials(value) {
        let _ = creds.nc_value();
    }
    if let Some(challenge) = digest::parse_challenge(value) {
        survives_printing(
            "challenge",
            challenge,
            |c| c.to_header_value(),
            |b| {
                std::str::from_utf8(b)
                    .ok()
                    .and_then(digest::parse_challenge)
            },
        );
    }
}
