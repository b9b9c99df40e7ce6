//! The config loader on mutated versions of every valid config we ship (fixtures, profiles,
//! the packaged config): it never panics, every refused value is named by its key with a fix,
//! and TOML's own syntax message is only for text that is not TOML at all. The same property
//! as the `config_parse` fuzz target, without libFuzzer (proptest shrinks a failure to a
//! small edit).

mod common;

use busylamp::config::{Config, ConfigError};
use proptest::prelude::*;

fn valid_configs() -> &'static [String] {
    static CONFIGS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    CONFIGS.get_or_init(read_valid_configs)
}

fn read_valid_configs() -> Vec<String> {
    common::shipped_configs()
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect()
}

/// Values of every TOML type and the kinds of strings the config parses.
const VALUES: &[&str] = &[
    "0",
    "-1",
    "1",
    "4294967296",
    "99999999999999999999",
    "3.5",
    "true",
    "\"\"",
    "\"x\"",
    "\"*\"",
    "\"a b\"",
    "\"sip:\"",
    "\"sip:1001@example.com\"",
    "\"sips:192.0.2.1\"",
    "\"udp:[::1]:0\"",
    "\"10.0.0.0/33\"",
    "\"MD5\"",
    "\"open\"",
    "[]",
    "[\"\"]",
    "[1, 2]",
    "[\"udp:0.0.0.0:5060\", \"sctp:x\"]",
    "{}",
    "{ a = 1 }",
    "1979-05-27T07:32:00Z",
    "07:32:00",
];

#[derive(Debug, Clone)]
enum Edit {
    /// Replace the value of the n-th `key = value` line.
    Value(usize, &'static str),
    /// Change one character of the n-th line's key.
    Key(usize, usize, char),
    DeleteLine(usize),
    DuplicateLine(usize),
    /// Insert text at a byte position.
    Insert(usize, String),
    Truncate(usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<usize>(), prop::sample::select(VALUES)).prop_map(|(n, v)| Edit::Value(n, v)),
        (any::<usize>(), any::<usize>(), prop::char::range('\0', 'z'))
            .prop_map(|(n, i, c)| Edit::Key(n, i, c)),
        any::<usize>().prop_map(Edit::DeleteLine),
        any::<usize>().prop_map(Edit::DuplicateLine),
        (any::<usize>(), "[\\[\\]{}=\",.\n#a-z0-9 *@:]{1,8}").prop_map(|(i, s)| Edit::Insert(i, s)),
        any::<usize>().prop_map(Edit::Truncate),
    ]
}

fn apply(text: &str, edit: &Edit) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let at_char_boundary = |i: usize| {
        let mut i = i % (text.len() + 1);
        while !text.is_char_boundary(i) {
            i -= 1;
        }
        i
    };
    match edit {
        Edit::Value(n, v) => {
            let assignments: Vec<usize> = (0..lines.len())
                .filter(|&i| !lines[i].trim_start().starts_with('#') && lines[i].contains('='))
                .collect();
            if let Some(&i) = assignments.get(n % assignments.len().max(1)) {
                let key = lines[i].split('=').next().unwrap().to_string();
                lines[i] = format!("{key}= {v}");
            }
        }
        Edit::Key(n, at, c) => {
            if !lines.is_empty() {
                let count = lines.len();
                let line = &mut lines[n % count];
                let chars: Vec<char> = line.chars().collect();
                let key_len = chars.iter().position(|&c| c == '=').unwrap_or(chars.len());
                if key_len > 0 {
                    let mut chars = chars;
                    chars[at % key_len] = *c;
                    *line = chars.into_iter().collect();
                }
            }
        }
        Edit::DeleteLine(n) => {
            if !lines.is_empty() {
                let n = n % lines.len();
                lines.remove(n);
            }
        }
        Edit::DuplicateLine(n) => {
            if !lines.is_empty() {
                let n = n % lines.len();
                let line = lines[n].clone();
                lines.insert(n, line);
            }
        }
        Edit::Insert(i, s) => {
            let i = at_char_boundary(*i);
            return format!("{}{s}{}", &text[..i], &text[i..]);
        }
        Edit::Truncate(i) => return text[..at_char_boundary(*i)].to_string(),
    }
    lines.join("\n") + "\n"
}

/// The property: a config, or an error that names a key (with its line) and a fix; TOML's
/// own message only for text that is not TOML.
fn check(text: &str) -> Result<(), TestCaseError> {
    match Config::from_toml(text, "m.toml") {
        Ok(cfg) => prop_assert!(cfg.validate("m.toml").is_ok()),
        Err(e @ ConfigError::Invalid { .. }) => {
            let ConfigError::Invalid { key, fix, .. } = &e else {
                unreachable!()
            };
            prop_assert!(!key.is_empty() && !fix.is_empty(), "{}", e);
            let shown = e.to_string();
            let named = format!("key `{key}`");
            prop_assert!(
                shown.contains(&named) && shown.contains("; fix: "),
                "{}",
                shown
            );
        }
        Err(e @ ConfigError::Syntax { .. }) => {
            prop_assert!(
                toml::from_str::<toml::Table>(text).is_err(),
                "valid TOML refused without naming a key: {}\n{}",
                e,
                text
            );
        }
        Err(e) => prop_assert!(false, "unexpected error {}", e),
    }
    Ok(())
}

#[test]
fn every_valid_config_we_ship_loads() {
    for text in valid_configs() {
        Config::from_toml(text, "v.toml").unwrap();
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    #[test]
    fn mutated_configs_load_or_name_the_key(
        which in any::<usize>(),
        edits in prop::collection::vec(edit(), 1..4),
    ) {
        let configs = valid_configs();
        let mut text = configs[which % configs.len()].clone();
        for e in &edits {
            text = apply(&text, e);
        }
        check(&text)?;
    }
}
