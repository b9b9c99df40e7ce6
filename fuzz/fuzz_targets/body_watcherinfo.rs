//! watcherinfo bodies (RFC 3858): no panic on any input;
//! whatever parses survives printing (see ../checks.rs).
#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::watcherinfo(data));
