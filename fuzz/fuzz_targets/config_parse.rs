//! Any text given to the config loader gives a config or an error; never a panic. An error
//! about a value names its key and a fix; only text that is not TOML gets TOML's own message.
#![no_main]

use busylamp::config::{Config, ConfigError};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::from_toml(text, "fuzz.toml") {
        Ok(cfg) => {
            cfg.validate("fuzz.toml").expect("a loaded config validates");
        }
        Err(ConfigError::Invalid { key, fix, .. }) => {
            assert!(!key.is_empty() && !fix.is_empty());
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
