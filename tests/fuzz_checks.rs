//! The fuzz targets' properties (`fuzz/checks.rs`: dialog-info, PIDF, watcherinfo and
//! message-summary bodies, Digest header values) run here too, on the body fixtures and
//! captures corrupted by proptest: nothing panics, whatever parses prints to text that parses
//! back equal. This keeps the targets' code compiling and exercised where no nightly
//! toolchain or cargo-fuzz is installed; a failure shrinks to few, simple edits.

#[path = "../fuzz/checks.rs"]
mod checks;
mod common;

use common::mutate;
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, RngSeed};

/// Every check, on the same bytes (each ignores what it cannot parse).
fn check_all(data: &[u8]) {
    checks::dialog_info(data);
    checks::pidf(data);
    checks::watcherinfo(data);
    checks::message_summary(data);
    checks::digest_header(data);
}

/// The seeds: every body fixture and capture (a `.sip` capture's body, its LF line ends made
/// CRLF) and Digest header values as phones and we write them; read once.
fn seeds() -> &'static [Vec<u8>] {
    static SEEDS: std::sync::OnceLock<Vec<Vec<u8>>> = std::sync::OnceLock::new();
    SEEDS.get_or_init(read_seeds)
}

fn read_seeds() -> Vec<Vec<u8>> {
    let root = env!("CARGO_MANIFEST_DIR");
    let mut out = Vec::new();
    for dir in ["fixtures/bodies/golden", "fixtures/bodies/captures"] {
        let mut paths: Vec<_> = std::fs::read_dir(format!("{root}/{dir}"))
            .expect("fixtures dir")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        paths.sort();
        for path in paths {
            let text = std::fs::read(&path).expect("fixture");
            match path.extension().and_then(|x| x.to_str()) {
                Some("xml" | "txt") => out.push(text),
                Some("sip") => {
                    let text = String::from_utf8_lossy(&text).replace("\r\n", "\n");
                    if let Some((_, body)) = text.split_once("\n\n") {
                        out.push(body.replace('\n', "\r\n").into_bytes());
                    }
                }
                _ => {}
            }
        }
    }
    for header in [
        "Digest realm=\"example.test\", nonce=\"n0nce\", opaque=\"o\", algorithm=SHA-256, qop=\"auth\", stale=true",
        "Digest realm=\"pierrefouquet.babblevoice.com\", algorithm=MD5, qop=\"auth\", nonce=\"7d4b7aa44cda192fecad03e48a45ca59\", opaque=\"59ea226be29c979bb10105e8ba654779\", stale=false",
        "Digest username=\"1013\", realm=\"pierrefouquet.babblevoice.com\", nonce=\"921a55467c54fdd626a9077a1c7f6358\", qop=auth, cnonce=\"X+5uJHgPKBGjp82\", nc=00000001, opaque=\"4804ccfd48df7fecce5b185da0e7175d\", uri=\"sip:pierrefouquet.babblevoice.com;transport=udp\", response=\"595e46251eb788c6df3b717fe7ad6f4a\", algorithm=MD5",
        "Digest username=\"a\\\"b\", realm=\"r\", nonce=\"n\", uri=\"sip:example.test\", response=\"0123456789abcdef0123456789abcdef\", algorithm=SHA-256-sess, cnonce=\"c\", nc=0000000a, qop=auth",
    ] {
        out.push(header.as_bytes().to_vec());
    }
    out
}

/// A fixed seed unless `PROPTEST_RNG_SEED` names another; no regression files.
fn config(cases: u32) -> Config {
    let mut c = Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    };
    if std::env::var_os("PROPTEST_RNG_SEED").is_none() {
        c.rng_seed = RngSeed::Fixed(0xf022);
    }
    c
}

#[test]
fn the_seeds_hold_the_properties_and_each_body_kind_is_among_them() {
    use busylamp::sip::body::{dialog_info, mwi, pidf, watcherinfo};
    use busylamp::sip::digest;
    let seeds = seeds();
    for s in seeds {
        check_all(s);
    }
    let count = |ok: &dyn Fn(&[u8]) -> bool| seeds.iter().filter(|s| ok(s)).count();
    assert!(count(&|s| dialog_info::parse(s).is_ok()) >= 5);
    assert!(count(&|s| pidf::parse(s).is_ok()) >= 3);
    assert!(count(&|s| watcherinfo::parse(s).is_ok()) >= 2);
    assert!(count(&|s| mwi::parse(s).is_ok()) >= 1);
    let text = |s: &[u8]| String::from_utf8(s.to_vec()).unwrap_or_default();
    assert!(count(&|s| digest::parse_challenge(&text(s)).is_some()) >= 2);
    assert!(count(&|s| digest::parse_credentials(&text(s)).is_ok()) >= 2);
}

proptest! {
    #![proptest_config(config(6_000))]

    #[test]
    fn mutated_bodies_and_digest_values_never_panic_and_reprint_equal(
        seed in any::<Index>(),
        edits in mutate::edits(8),
    ) {
        check_all(&mutate::apply(seed.get::<Vec<u8>>(seeds()), &edits));
    }

    #[test]
    fn arbitrary_bytes_never_panic(data in prop::collection::vec(any::<u8>(), 0..512)) {
        check_all(&data);
    }
}
