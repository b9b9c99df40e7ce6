//! Digest header values (RFC 7616): no panic on any input;
//! whatever parses survives printing (see ../checks.rs).
#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::digest_header(data));
