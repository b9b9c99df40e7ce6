//! dialog-info bodies (RFC 4235): no panic on any input;
//! whatever parses survives printing (see ../checks.rs).
#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::dialog_info(data));
