//! Turns a TOML or serde error into a config error naming the key and a fix.

use super::*;
use std::ops::Range;

/// A TOML value with its position in the text when TOML knows it (the tables that
/// dotted keys and `[a.b]` headers create implicitly have none).
struct Positioned {
    span: Option<Range<usize>>,
    node: Node,
}

/// The shape of a TOML document: tables, arrays and everything else.
enum Node {
    Table(Vec<(String, Positioned)>),
    Array(Vec<Positioned>),
    Leaf,
}

// How `toml` hands out positions: a value asked for as this struct comes as a map of
// start, end and value (`serde_spanned`'s protocol, which `toml::Spanned` speaks); a value
// without a position comes as itself.
const SPANNED: &str = "$__serde_spanned_private_Spanned";
const START: &str = "$__serde_spanned_private_start";
const END: &str = "$__serde_spanned_private_end";
const VALUE: &str = "$__serde_spanned_private_value";

impl<'de> Deserialize<'de> for Positioned {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Positioned, D::Error> {
        d.deserialize_struct(SPANNED, &[START, END, VALUE], Shape(true))
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Node, D::Error> {
        Ok(d.deserialize_any(Shape(false))?.node)
    }
}

/// Reads any value; `spanned`: it may be the start/end/value map.
struct Shape(bool);

impl Shape {
    fn plain<E>(node: Node) -> Result<Positioned, E> {
        Ok(Positioned { span: None, node })
    }
}

impl<'de> Visitor<'de> for Shape {
    type Value = Positioned;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any TOML value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<Positioned, E> {
        Shape::plain(Node::Leaf)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Positioned, E> {
        Shape::plain(Node::Leaf)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Positioned, E> {
        Shape::plain(Node::Leaf)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Positioned, E> {
        Shape::plain(Node::Leaf)
    }
    fn visit_str<E>(self, _: &str) -> Result<Positioned, E> {
        Shape::plain(Node::Leaf)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Positioned, A::Error> {
        let mut items = Vec::new();
        while let Some(v) = seq.next_element()? {
            items.push(v);
        }
        Shape::plain(Node::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Positioned, A::Error> {
        let mut entries = Vec::new();
        let Some(first) = map.next_key::<String>()? else {
            return Shape::plain(Node::Table(entries));
        };
        if self.0 && first == START {
            let start: usize = map.next_value()?;
            let _ = map.next_key::<String>()?;
            let end: usize = map.next_value()?;
            let _ = map.next_key::<String>()?;
            let node: Node = map.next_value()?;
            return Ok(Positioned {
                span: Some(start..end),
                node,
            });
        }
        entries.push((first, map.next_value()?));
        while let Some(k) = map.next_key()? {
            entries.push((k, map.next_value()?));
        }
        Shape::plain(Node::Table(entries))
    }
}

fn contains(outer: &Range<usize>, inner: &Range<usize>) -> bool {
    outer.start <= inner.start && inner.end <= outer.end
}

/// The path of the smallest value around `at` (the deepest on a tie). An error about a
/// key (unknown field) points at the key, inside its table.
fn find(node: &Node, at: &Range<usize>, path: &str, best: &mut Option<(usize, String)>) {
    let mut consider = |v: &Positioned, path: String| {
        if let Some(span) = v.span.clone().filter(|s| contains(s, at)) {
            if best.as_ref().is_none_or(|(len, _)| span.len() <= *len) {
                *best = Some((span.len(), path.clone()));
            }
        }
        find(&v.node, at, &path, best);
    };
    match node {
        Node::Table(entries) => {
            for (k, v) in entries {
                consider(v, join(path, k));
            }
        }
        Node::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                consider(v, format!("{path}[{i}]"));
            }
        }
        Node::Leaf => {}
    }
}

fn join(key: &str, field: &str) -> String {
    if key.is_empty() {
        field.to_string()
    } else {
        format!("{key}.{field}")
    }
}

/// The name between the first pair of backquotes.
fn quoted(s: &str) -> Option<&str> {
    s.split('`').nth(1)
}

/// What to write instead of a value of the wrong type, from serde's "expected ...".
fn fix_for(expected: &str) -> String {
    let expected = expected.trim();
    let number = [
        "u8", "u16", "u32", "u64", "usize", "i8", "i16", "i32", "i64", "isize",
    ];
    if number.contains(&expected) {
        "write a whole number without quotes, e.g. 60".into()
    } else if expected == "a boolean" {
        "write true or false, without quotes".into()
    } else if expected == "a string" || expected.contains("path") {
        "write the value in double quotes".into()
    } else if expected == "a sequence" {
        "write a list in brackets, e.g. [\"...\"]".into()
    } else if expected.starts_with("struct") || expected.contains("map") {
        "write a table: a [section] header with key = value lines".into()
    } else {
        format!("write {expected}")
    }
}

/// Problem and fix from the error message, completing `key` with the field it names.
fn explain(message: &str, key: &mut String) -> (String, String) {
    let message = message.trim();
    if let Some((problem, fix)) = message.split_once(FIX) {
        return (problem.into(), fix.into());
    }
    if let Some(rest) = message.strip_prefix("unknown field ") {
        let field = quoted(rest).unwrap_or(rest);
        if !key.ends_with(field) {
            *key = join(key, field);
        }
        let fix = match rest.split_once(", expected ") {
            Some((_, keys)) => {
                format!("remove it or correct its spelling: this table takes {keys}")
            }
            None => "remove it: this table takes no keys".into(),
        };
        return (format!("unknown field `{field}`"), fix);
    }
    if let Some(rest) = message.strip_prefix("missing field ") {
        let field = quoted(rest).unwrap_or(rest);
        *key = join(key, field);
        return (
            "is missing".into(),
            format!("add {field} = ... to this entry"),
        );
    }
    if let Some(rest) = message.strip_prefix("unknown variant ") {
        if let Some((value, expected)) = rest.split_once(", expected ") {
            let value = quoted(value).unwrap_or(value);
            return (
                format!("{value:?} is not an accepted value"),
                format!("use {expected}"),
            );
        }
    }
    if message.starts_with("wanted string or table") || message.starts_with("wanted exactly 1") {
        // An enum given something other than a word.
        return (
            "is not one of the accepted words".into(),
            "write one of the values the README's configuration table lists, in double quotes"
                .into(),
        );
    }
    if message.starts_with("invalid type") || message.starts_with("invalid value") {
        if let Some((_, expected)) = message.rsplit_once(", expected ") {
            return (message.into(), fix_for(expected));
        }
    }
    (
        message.into(),
        "see the configuration table in the README".into(),
    )
}

/// `error` came from reading `text` (the file `path`) into a [`Config`].
pub(super) fn config_error(text: &str, path: &str, error: &toml::de::Error) -> ConfigError {
    let syntax = || ConfigError::Syntax {
        path: path.to_string(),
        message: error.to_string().trim_end().replace('\n', "\n  "),
    };
    let Some(at) = error.span() else {
        return syntax();
    };
    // A document that does not even read as plain TOML has a syntax error.
    let Ok(tree) = toml::from_str::<Node>(text) else {
        return syntax();
    };
    let mut best = None;
    find(&tree, &at, "", &mut best);
    let mut key = best.map(|(_, k)| k).unwrap_or_default();
    let (problem, fix) = explain(error.message(), &mut key);
    if key.is_empty() {
        return syntax();
    }
    let line = 1 + text
        .as_bytes()
        .get(..at.start)
        .map_or(0, |b| b.iter().filter(|&&c| c == b'\n').count());
    ConfigError::Invalid {
        path: format!("{path}:{line}"),
        key,
        problem,
        fix,
    }
}
