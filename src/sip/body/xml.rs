//! The XML plumbing the body formats share: a bounded, namespace-aware parser into a small
//! owned tree (on top of `quick-xml`), escaping, and a writer that re-serialises elements
//! taken from several documents into one with correct namespace declarations.
//!
//! The parser is built for hostile input: at most [`MAX_DEPTH`] levels and [`MAX_ELEMENTS`]
//! elements, [`MAX_ATTRIBUTES`] attributes of at most [`MAX_ATTR_LEN`] bytes each, no DTD (a
//! `<!DOCTYPE` is refused, so there is no entity to expand), only the five predefined entities
//! and character references, UTF-8 (or a declared ISO-8859-1, converted). Every failure is a
//! [`BodyError`] with a short reason; nothing panics.

use std::borrow::Cow;
use std::sync::Arc;

use quick_xml::errors::{Error as QxError, IllFormedError, SyntaxError};
use quick_xml::events::{BytesStart, Event};
use quick_xml::{Reader, XmlVersion};

use super::{check_len, quote, BodyError};

/// The namespace the `xml:` prefix is bound to (`xml:lang`).
pub const NS_XML: &str = "http://www.w3.org/XML/1998/namespace";

/// Deepest element nesting accepted (the root is level 1).
pub const MAX_DEPTH: usize = 32;
/// Most elements accepted in one document.
pub const MAX_ELEMENTS: usize = 2048;
/// Most attributes (namespace declarations included) on one element.
pub const MAX_ATTRIBUTES: usize = 64;
/// Longest attribute value accepted, in bytes.
pub const MAX_ATTR_LEN: usize = 4096;

/// An expanded name: namespace URI (if any), the prefix the document used (a hint for
/// printing only) and the local name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Name {
    pub ns: Option<Arc<str>>,
    pub prefix: Option<String>,
    pub local: String,
}

impl Name {
    /// Whether this is `local` in namespace `ns`.
    pub fn is(&self, ns: &str, local: &str) -> bool {
        self.local == local && self.ns.as_deref() == Some(ns)
    }

    /// The name as the document wrote it (`prefix:local`), for messages.
    pub fn qualified(&self) -> String {
        match &self.prefix {
            Some(p) => format!("{p}:{}", self.local),
            None => self.local.clone(),
        }
    }
}

/// An attribute (namespace declarations are not kept as attributes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attr {
    pub name: Name,
    /// The normalised value (references resolved, whitespace characters as spaces).
    pub value: String,
}

/// A child of an element.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    Element(Element),
    /// Character data (references resolved, CDATA folded in, line ends normalised to LF).
    Text(String),
}

/// An element with its attributes and children, in document order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Element {
    pub name: Name,
    pub attrs: Vec<Attr>,
    pub children: Vec<Node>,
}

impl Element {
    /// Whether this element is `local` in namespace `ns`.
    pub fn is(&self, ns: &str, local: &str) -> bool {
        self.name.is(ns, local)
    }

    /// The element's namespace URI.
    pub fn ns(&self) -> Option<&str> {
        self.name.ns.as_deref()
    }

    /// The value of the attribute `local` that has no namespace (the usual, unprefixed kind).
    pub fn attr(&self, local: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|a| a.name.ns.is_none() && a.name.local == local)
            .map(|a| a.value.as_str())
    }

    /// The value of the attribute `local` in namespace `ns` (e.g. `xml:lang`).
    pub fn attr_ns(&self, ns: &str, local: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|a| a.name.is(ns, local))
            .map(|a| a.value.as_str())
    }

    /// The child elements, in order.
    pub fn elements(&self) -> impl Iterator<Item = &Element> {
        self.children.iter().filter_map(|n| match n {
            Node::Element(e) => Some(e),
            Node::Text(_) => None,
        })
    }

    /// The child elements named `local` in namespace `ns`.
    pub fn children_named<'s>(
        &'s self,
        ns: &'s str,
        local: &'s str,
    ) -> impl Iterator<Item = &'s Element> + 's {
        self.elements().filter(move |e| e.is(ns, local))
    }

    /// The first child element named `local` in namespace `ns`.
    pub fn child(&self, ns: &str, local: &str) -> Option<&Element> {
        self.elements().find(|e| e.is(ns, local))
    }

    /// The element's own character data (its text children joined, descendants ignored).
    pub fn text(&self) -> Cow<'_, str> {
        let mut texts = self.children.iter().filter_map(|n| match n {
            Node::Text(t) => Some(t.as_str()),
            Node::Element(_) => None,
        });
        let first = texts.next().unwrap_or("");
        match texts.next() {
            None => Cow::Borrowed(first),
            Some(second) => {
                let mut all = format!("{first}{second}");
                texts.for_each(|t| all.push_str(t));
                Cow::Owned(all)
            }
        }
    }

    /// Whether any text child holds more than whitespace (mixed or text content).
    pub fn has_text(&self) -> bool {
        self.children
            .iter()
            .any(|n| matches!(n, Node::Text(t) if !is_blank(t)))
    }
}

/// Whether `s` is only XML whitespace.
pub fn is_blank(s: &str) -> bool {
    s.bytes().all(|b| matches!(b, b' ' | b'\t' | b'\r' | b'\n'))
}

/// Whether `c` may not appear in an XML 1.0 document, even as a character reference.
fn forbidden_char(c: char) -> bool {
    matches!(c, '\0'..='\u{8}' | '\u{b}' | '\u{c}' | '\u{e}'..='\u{1f}' | '\u{fffe}' | '\u{ffff}')
}

/// Appends `text` escaped for element content. Characters XML cannot carry become U+FFFD.
pub fn escape_text(text: &str, out: &mut String) {
    escape_with(text, out, |c| match c {
        '&' => Some("&amp;"),
        '<' => Some("&lt;"),
        '>' => Some("&gt;"),
        c if forbidden_char(c) => Some("\u{fffd}"),
        _ => None,
    })
}

/// Appends `value` with each character `replace` names replaced, copying the runs between
/// them whole: most values (URIs, ids, states) need no escaping at all, and a NOTIFY body is
/// rendered per watcher, so a push per character was a visible share of a call's CPU.
fn escape_with(value: &str, out: &mut String, replace: impl Fn(char) -> Option<&'static str>) {
    out.reserve(value.len());
    let mut clean = 0;
    for (i, c) in value.char_indices() {
        if let Some(r) = replace(c) {
            out.push_str(&value[clean..i]);
            out.push_str(r);
            clean = i + c.len_utf8();
        }
    }
    out.push_str(&value[clean..]);
}

/// Appends `value` escaped for a double-quoted attribute value; tabs and line ends become
/// character references so they survive attribute-value normalisation.
pub fn escape_attr(value: &str, out: &mut String) {
    escape_with(value, out, |c| match c {
        '&' => Some("&amp;"),
        '<' => Some("&lt;"),
        '>' => Some("&gt;"),
        '"' => Some("&quot;"),
        '\t' => Some("&#9;"),
        '\n' => Some("&#10;"),
        '\r' => Some("&#13;"),
        c if forbidden_char(c) => Some("\u{fffd}"),
        _ => None,
    })
}

/// Appends ` name="value"` with the value escaped.
pub fn push_attr(out: &mut String, name: &str, value: &str) {
    out.push(' ');
    out.push_str(name);
    out.push_str("=\"");
    escape_attr(value, out);
    out.push('"');
}

/// Appends `<name>text</name>` with the text escaped.
pub fn push_text_element(out: &mut String, name: &str, text: &str) {
    out.push('<');
    out.push_str(name);
    out.push('>');
    escape_text(text, out);
    out.push_str("</");
    out.push_str(name);
    out.push('>');
}

/// Appends `depth` levels of indentation (two spaces each).
pub fn indent(out: &mut String, depth: usize) {
    for _ in 0..depth {
        out.push_str("  ");
    }
}

/// Parses a whole document into its root element, enforcing the limits above.
pub fn parse(body: &[u8]) -> Result<Element, BodyError> {
    check_len(body)?;
    let text = decode(body)?;
    parse_str(&text)
}

/// The document as text: UTF-8 (a BOM is skipped), or ISO-8859-1 when the XML declaration
/// says so (converted). UTF-16 and other encodings are refused.
fn decode(body: &[u8]) -> Result<Cow<'_, str>, BodyError> {
    let body = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
    if body.starts_with(b"\xFE\xFF")
        || body.starts_with(b"\xFF\xFE")
        || (body.len() >= 2 && (body[0] == 0 || body[1] == 0))
    {
        return Err(BodyError::invalid("body is UTF-16; only UTF-8 is accepted"));
    }
    let encoding = declared_encoding(body);
    match encoding.as_deref() {
        None | Some("utf-8" | "utf8" | "us-ascii" | "ascii") => match std::str::from_utf8(body) {
            Ok(s) => Ok(Cow::Borrowed(s)),
            Err(e) => Err(BodyError::invalid(format!(
                "body is not valid UTF-8 (byte {})",
                e.valid_up_to()
            ))),
        },
        Some("iso-8859-1" | "iso_8859-1" | "latin1" | "latin-1" | "l1") => {
            Ok(Cow::Owned(body.iter().map(|&b| b as char).collect()))
        }
        Some(other) => Err(BodyError::invalid(format!(
            "XML encoding '{}' is not supported; use UTF-8",
            quote(other)
        ))),
    }
}

/// The `encoding` of a leading XML declaration, lowercased.
fn declared_encoding(body: &[u8]) -> Option<String> {
    if !body.starts_with(b"<?xml") {
        return None;
    }
    let head = &body[..body.len().min(256)];
    let end = head.windows(2).position(|w| w == b"?>")?;
    let decl = &head[..end];
    let at = decl.windows(8).position(|w| w == b"encoding")?;
    let rest = &decl[at + 8..];
    let rest = trim_start(rest);
    let rest = trim_start(rest.strip_prefix(b"=")?);
    let quote = *rest.first()?;
    if quote != b'"' && quote != b'\'' {
        return None;
    }
    let value = &rest[1..];
    let value = &value[..value.iter().position(|&b| b == quote)?];
    Some(String::from_utf8_lossy(value).trim().to_ascii_lowercase())
}

fn trim_start(b: &[u8]) -> &[u8] {
    let n = b
        .iter()
        .take_while(|c| matches!(c, b' ' | b'\t' | b'\r' | b'\n'))
        .count();
    &b[n..]
}

/// A namespace binding in scope: prefix (`""` for the default namespace) and URI (`None`
/// for an undeclared default).
struct Binding {
    prefix: String,
    ns: Option<Arc<str>>,
}

/// Parses a document already decoded to text (see [`parse`]).
pub fn parse_str(text: &str) -> Result<Element, BodyError> {
    let mut reader = Reader::from_str(text);
    {
        let config = reader.config_mut();
        config.check_end_names = true;
        config.expand_empty_elements = false;
        config.trim_text(false);
        config.allow_unmatched_ends = false;
    }
    // Open elements with how many bindings each pushed.
    let mut stack: Vec<(Element, usize)> = Vec::new();
    let mut bindings: Vec<Binding> = Vec::new();
    let mut root: Option<Element> = None;
    let mut elements = 0usize;
    loop {
        let event = match reader.read_event() {
            Ok(event) => event,
            Err(e) => return Err(qx_error(&e, reader.error_position(), &stack)),
        };
        match event {
            Event::Eof => break,
            Event::DocType(_) => {
                return Err(BodyError::invalid(
                    "XML body has a DOCTYPE; DTDs and entities are not allowed",
                ))
            }
            Event::Decl(decl) => {
                if let Ok(version) = decl.version() {
                    if version.as_ref() != "1.0" && version.as_ref() != "1.1" {
                        return Err(BodyError::xml(format!(
                            "unknown XML version '{}'",
                            quote(&version)
                        )));
                    }
                }
            }
            Event::PI(_) | Event::Comment(_) => {}
            Event::Start(start) | Event::Empty(start) if root.is_some() && stack.is_empty() => {
                let _ = start;
                return Err(BodyError::xml("more than one root element"));
            }
            Event::Start(start) => {
                elements += 1;
                check_limits(elements, stack.len() + 1)?;
                let (element, pushed) = open(&start, &mut bindings)?;
                stack.push((element, pushed));
            }
            Event::Empty(start) => {
                elements += 1;
                check_limits(elements, stack.len() + 1)?;
                let (element, pushed) = open(&start, &mut bindings)?;
                bindings.truncate(bindings.len() - pushed);
                attach(&mut stack, &mut root, element);
            }
            Event::End(_) => match stack.pop() {
                Some((element, pushed)) => {
                    bindings.truncate(bindings.len() - pushed);
                    attach(&mut stack, &mut root, element);
                }
                None => return Err(BodyError::xml("end tag without a start tag")),
            },
            Event::Text(t) => {
                let content = t.xml10_content();
                push_text(&mut stack, &content)?;
            }
            Event::CData(c) => {
                let content = c.xml10_content();
                if stack.is_empty() {
                    return Err(BodyError::xml("CDATA outside the root element"));
                }
                push_text(&mut stack, &content)?;
            }
            Event::GeneralRef(r) => {
                let resolved: String = match r.resolve_char_ref() {
                    Ok(Some(c)) if !forbidden_char(c) => c.to_string(),
                    Ok(Some(_)) | Err(_) => {
                        return Err(BodyError::xml(format!(
                            "bad character reference &{};",
                            quote(&r)
                        )))
                    }
                    Ok(None) => match quick_xml::escape::resolve_predefined_entity(&r) {
                        Some(s) => s.to_string(),
                        None => {
                            return Err(BodyError::xml(format!(
                                "undefined entity &{}; (no DTD entities)",
                                quote(&r)
                            )))
                        }
                    },
                };
                if stack.is_empty() {
                    return Err(BodyError::xml("reference outside the root element"));
                }
                push_text(&mut stack, &resolved)?;
            }
        }
    }
    if let Some((open, _)) = stack.last() {
        return Err(BodyError::xml(format!(
            "truncated: <{}> is not closed",
            quote(&open.name.qualified())
        )));
    }
    root.ok_or_else(|| BodyError::xml("no root element"))
}

fn check_limits(elements: usize, depth: usize) -> Result<(), BodyError> {
    if depth > MAX_DEPTH {
        return Err(BodyError::invalid(format!(
            "XML nested deeper than {MAX_DEPTH} levels"
        )));
    }
    if elements > MAX_ELEMENTS {
        return Err(BodyError::invalid(format!(
            "XML has more than {MAX_ELEMENTS} elements"
        )));
    }
    Ok(())
}

/// A short reason for a `quick-xml` error.
fn qx_error(e: &QxError, position: u64, stack: &[(Element, usize)]) -> BodyError {
    let open = || {
        stack
            .last()
            .map(|(e, _)| quote(&e.name.qualified()))
            .unwrap_or_default()
    };
    match e {
        QxError::Syntax(s) => {
            let what = match s {
                SyntaxError::InvalidBangMarkup => "unknown <! markup",
                SyntaxError::UnclosedPI | SyntaxError::UnclosedXmlDecl => {
                    "truncated: <? not closed"
                }
                SyntaxError::UnclosedComment => "truncated: comment not closed",
                SyntaxError::UnclosedDoctype => {
                    return BodyError::invalid(
                        "XML body has a DOCTYPE; DTDs and entities are not allowed",
                    )
                }
                SyntaxError::UnclosedCData => "truncated: CDATA not closed",
                SyntaxError::UnclosedTag => "truncated: tag not closed",
                SyntaxError::UnclosedSingleQuotedAttributeValue
                | SyntaxError::UnclosedDoubleQuotedAttributeValue => {
                    "truncated: attribute value not closed"
                }
            };
            BodyError::xml(format!("{what} (byte {position})"))
        }
        QxError::IllFormed(i) => match i {
            IllFormedError::MissingEndTag(tag) => {
                BodyError::xml(format!("truncated: <{}> is not closed", quote(tag)))
            }
            IllFormedError::UnmatchedEndTag(tag) => {
                BodyError::xml(format!("</{}> has no start tag", quote(tag)))
            }
            IllFormedError::MismatchedEndTag { expected, found } => {
                BodyError::xml(format!("</{}> closes <{}>", quote(found), quote(expected)))
            }
            IllFormedError::UnclosedReference => {
                BodyError::xml(format!("'&' without ';' (byte {position})"))
            }
            IllFormedError::MissingDoctypeName => {
                BodyError::invalid("XML body has a DOCTYPE; DTDs and entities are not allowed")
            }
            other => BodyError::xml(format!("{other} (byte {position})")),
        },
        QxError::InvalidAttr(_) => BodyError::xml(format!("bad attribute syntax in <{}>", open())),
        QxError::Escape(_) => BodyError::xml(format!("bad reference (byte {position})")),
        other => BodyError::xml(format!("{other} (byte {position})")),
    }
}

/// Adds a finished element to its parent, or makes it the root.
fn attach(stack: &mut [(Element, usize)], root: &mut Option<Element>, element: Element) {
    match stack.last_mut() {
        Some((parent, _)) => parent.children.push(Node::Element(element)),
        None => *root = Some(element),
    }
}

/// Adds character data to the open element (merging with a preceding text child); outside
/// the root only whitespace is allowed.
fn push_text(stack: &mut [(Element, usize)], text: &str) -> Result<(), BodyError> {
    if text.chars().any(forbidden_char) {
        return Err(BodyError::xml("control character in text"));
    }
    let Some((parent, _)) = stack.last_mut() else {
        if is_blank(text) {
            return Ok(());
        }
        return Err(BodyError::xml("text outside the root element"));
    };
    if text.is_empty() {
        return Ok(());
    }
    if let Some(Node::Text(last)) = parent.children.last_mut() {
        last.push_str(text);
    } else {
        parent.children.push(Node::Text(text.to_string()));
    }
    Ok(())
}

/// Whether `s` is an XML NCName (a name without colon). Non-ASCII characters are accepted as
/// name characters without checking the exact Unicode classes.
fn is_ncname(s: &str) -> bool {
    let mut chars = s.chars();
    let Some(first) = chars.next() else {
        return false;
    };
    (first.is_ascii_alphabetic() || first == '_' || !first.is_ascii())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_') || !c.is_ascii())
}

/// Splits a qualified name into prefix and local part, or `None` when it is not a QName.
fn split_qname(s: &str) -> Option<(Option<&str>, &str)> {
    match s.split_once(':') {
        None => is_ncname(s).then_some((None, s)),
        Some((p, l)) => (is_ncname(p) && is_ncname(l)).then_some((Some(p), l)),
    }
}

/// The namespace bound to `prefix` (`None` = the default namespace).
fn resolve(bindings: &[Binding], prefix: Option<&str>) -> Result<Option<Arc<str>>, String> {
    match prefix {
        Some("xml") => Ok(Some(Arc::from(NS_XML))),
        Some(p) => match bindings.iter().rev().find(|b| b.prefix == p) {
            Some(b) => Ok(b.ns.clone()),
            None => Err(p.to_string()),
        },
        None => Ok(bindings
            .iter()
            .rev()
            .find(|b| b.prefix.is_empty())
            .and_then(|b| b.ns.clone())),
    }
}

/// Reads a start tag: pushes its namespace declarations, resolves its names and checks its
/// attributes. Returns the element (no children yet) and how many bindings it pushed.
fn open(
    start: &BytesStart<'_>,
    bindings: &mut Vec<Binding>,
) -> Result<(Element, usize), BodyError> {
    let raw_name = start.name().0;
    let Some((prefix, local)) = split_qname(raw_name) else {
        return Err(BodyError::xml(format!(
            "bad element name <{}>",
            quote(raw_name)
        )));
    };
    let mut raw_attrs: Vec<(Option<&str>, &str, String)> = Vec::new();
    let mut pushed = 0usize;
    let mut count = 0usize;
    let attributes = start.attributes();
    let mut result = Ok(());
    for attr in attributes {
        let attr = match attr {
            Ok(a) => a,
            Err(_) => {
                result = Err(BodyError::xml(format!(
                    "bad attribute syntax in <{}>",
                    quote(raw_name)
                )));
                break;
            }
        };
        count += 1;
        if count > MAX_ATTRIBUTES {
            result = Err(BodyError::invalid(format!(
                "<{}> has more than {MAX_ATTRIBUTES} attributes",
                quote(raw_name)
            )));
            break;
        }
        let key = attr.key.0;
        let value = match attr.normalized_value(XmlVersion::Implicit1_0) {
            Ok(v) => v,
            Err(_) => {
                result = Err(BodyError::xml(format!(
                    "bad reference in attribute '{}' (no DTD entities)",
                    quote(key)
                )));
                break;
            }
        };
        if value.len() > MAX_ATTR_LEN {
            result = Err(BodyError::invalid(format!(
                "attribute '{}' is longer than {MAX_ATTR_LEN} bytes",
                quote(key)
            )));
            break;
        }
        if value.chars().any(forbidden_char) {
            result = Err(BodyError::xml(format!(
                "control character in attribute '{}'",
                quote(key)
            )));
            break;
        }
        if key == "xmlns" {
            if value.as_ref() == NS_XML {
                result = Err(BodyError::xml("misuse of the xml namespace"));
                break;
            }
            let ns = (!value.is_empty()).then(|| Arc::from(value.as_ref()));
            bindings.push(Binding {
                prefix: String::new(),
                ns,
            });
            pushed += 1;
        } else if let Some(p) = key.strip_prefix("xmlns:") {
            let bad = if !is_ncname(p) || p == "xmlns" {
                Some(format!("bad namespace prefix '{}'", quote(p)))
            } else if value.is_empty() {
                Some(format!("namespace prefix '{}' bound to nothing", quote(p)))
            } else if (p == "xml") != (value.as_ref() == NS_XML) {
                Some("misuse of the xml namespace".to_string())
            } else {
                None
            };
            if let Some(reason) = bad {
                result = Err(BodyError::xml(reason));
                break;
            }
            bindings.push(Binding {
                prefix: p.to_string(),
                ns: Some(Arc::from(value.as_ref())),
            });
            pushed += 1;
        } else {
            let Some((ap, al)) = split_qname(key) else {
                result = Err(BodyError::xml(format!(
                    "bad attribute name '{}'",
                    quote(key)
                )));
                break;
            };
            raw_attrs.push((ap, al, value.into_owned()));
        }
    }
    let resolved = result.and_then(|()| resolve_names(bindings, prefix, local, raw_attrs));
    match resolved {
        Ok(element) => Ok((element, pushed)),
        Err(e) => {
            bindings.truncate(bindings.len() - pushed);
            Err(e)
        }
    }
}

fn resolve_names(
    bindings: &[Binding],
    prefix: Option<&str>,
    local: &str,
    raw_attrs: Vec<(Option<&str>, &str, String)>,
) -> Result<Element, BodyError> {
    let undeclared =
        |p: String| BodyError::xml(format!("namespace prefix '{}' is not declared", quote(&p)));
    if prefix == Some("xml") {
        return Err(BodyError::xml("element in the xml namespace"));
    }
    let ns = resolve(bindings, prefix).map_err(undeclared)?;
    let mut attrs: Vec<Attr> = Vec::with_capacity(raw_attrs.len());
    for (ap, al, value) in raw_attrs {
        let ans = match ap {
            None => None,
            Some(_) => resolve(bindings, ap).map_err(undeclared)?,
        };
        if attrs.iter().any(|a| a.name.local == al && a.name.ns == ans) {
            return Err(BodyError::xml(format!(
                "attribute '{}' appears twice",
                quote(al)
            )));
        }
        attrs.push(Attr {
            name: Name {
                ns: ans,
                prefix: ap.map(str::to_string),
                local: al.to_string(),
            },
            value,
        });
    }
    Ok(Element {
        name: Name {
            ns,
            prefix: prefix.map(str::to_string),
            local: local.to_string(),
        },
        attrs,
        children: Vec::new(),
    })
}

/// Writes elements from several documents under one root whose default namespace is fixed,
/// choosing one prefix per namespace: a well-known prefix where the caller gave one, else
/// the prefix the source document used when it is free, else `ns1`, `ns2`, ... All
/// declarations go on the root, so copied elements stay namespace-correct whatever prefixes
/// their sources used (two sources using one prefix for different namespaces, or different
/// prefixes for one namespace). Use: [`NsWriter::register`] every element to be written,
/// then [`NsWriter::write_declarations`] inside the root start tag, then
/// [`NsWriter::write_element`] for each.
#[derive(Debug)]
pub struct NsWriter {
    default_ns: &'static str,
    well_known: &'static [(&'static str, &'static str)],
    /// Namespace → prefix, in order of first use.
    prefixes: Vec<(Arc<str>, String)>,
    /// A prefix for attributes in the default namespace (attributes need a prefix).
    default_attr_prefix: Option<String>,
}

impl NsWriter {
    /// `default_ns` is the root's default namespace; `well_known` maps namespaces to the
    /// prefixes they get when used (and reserves those prefixes).
    pub fn new(
        default_ns: &'static str,
        well_known: &'static [(&'static str, &'static str)],
    ) -> Self {
        NsWriter {
            default_ns,
            well_known,
            prefixes: Vec::new(),
            default_attr_prefix: None,
        }
    }

    fn taken(&self, prefix: &str) -> bool {
        prefix == "xml"
            || prefix.len() >= 3 && prefix[..3].eq_ignore_ascii_case("xml")
            || self.prefixes.iter().any(|(_, p)| p == prefix)
            || self.default_attr_prefix.as_deref() == Some(prefix)
    }

    fn reserved_for_other(&self, prefix: &str, ns: &str) -> bool {
        self.well_known
            .iter()
            .any(|(n, p)| *p == prefix && *n != ns)
    }

    fn fresh(&self) -> String {
        (1..)
            .map(|i| format!("ns{i}"))
            .find(|p| !self.taken(p) && !self.reserved_for_other(p, ""))
            .unwrap_or_default()
    }

    fn choose(&self, ns: &str, hint: Option<&str>) -> String {
        if let Some((_, p)) = self.well_known.iter().find(|(n, _)| *n == ns) {
            if !self.taken(p) {
                return p.to_string();
            }
        }
        if let Some(h) = hint {
            if is_ncname(h) && !self.taken(h) && !self.reserved_for_other(h, ns) {
                return h.to_string();
            }
        }
        self.fresh()
    }

    fn ensure(&mut self, ns: &Arc<str>, hint: Option<&str>) {
        if &**ns == NS_XML || self.prefixes.iter().any(|(n, _)| n == ns) {
            return;
        }
        let prefix = self.choose(ns, hint);
        self.prefixes.push((ns.clone(), prefix));
    }

    /// Notes the namespaces `element` and its descendants use.
    pub fn register(&mut self, element: &Element) {
        if let Some(ns) = &element.name.ns {
            if &**ns != self.default_ns {
                self.ensure(ns, element.name.prefix.as_deref());
            }
        }
        for attr in &element.attrs {
            let Some(ns) = &attr.name.ns else { continue };
            if &**ns == self.default_ns {
                if self.default_attr_prefix.is_none() {
                    let hint = attr.name.prefix.as_deref();
                    let p = self.choose(ns, hint);
                    self.default_attr_prefix = Some(p);
                }
            } else {
                self.ensure(ns, attr.name.prefix.as_deref());
            }
        }
        for child in element.elements() {
            self.register(child);
        }
    }

    /// Appends the namespace declarations for the root start tag (` xmlns="..."` first).
    pub fn write_declarations(&self, out: &mut String) {
        push_attr(out, "xmlns", self.default_ns);
        if let Some(p) = &self.default_attr_prefix {
            push_attr(out, &format!("xmlns:{p}"), self.default_ns);
        }
        for (ns, p) in &self.prefixes {
            push_attr(out, &format!("xmlns:{p}"), ns);
        }
    }

    fn element_name(&self, name: &Name, out: &mut String) {
        if let Some(ns) = &name.ns {
            if &**ns != self.default_ns {
                if let Some((_, p)) = self.prefixes.iter().find(|(n, _)| n == ns) {
                    out.push_str(p);
                    out.push(':');
                }
            }
        }
        out.push_str(&name.local);
    }

    fn attr_name(&self, name: &Name, out: &mut String) {
        match name.ns.as_deref() {
            None => {}
            Some(NS_XML) => out.push_str("xml:"),
            Some(ns) if ns == self.default_ns => {
                if let Some(p) = &self.default_attr_prefix {
                    out.push_str(p);
                    out.push(':');
                }
            }
            Some(ns) => {
                if let Some((_, p)) = self.prefixes.iter().find(|(n, _)| &**n == ns) {
                    out.push_str(p);
                    out.push(':');
                }
            }
        }
        out.push_str(&name.local);
    }

    /// Appends `element` on its own line(s) at `depth`, as a child of the root (where the
    /// default namespace is in scope). Element-only content is re-indented; text and mixed
    /// content is written as it was.
    pub fn write_element(&self, element: &Element, depth: usize, out: &mut String) {
        self.write(element, Some(depth), true, out);
    }

    /// `depth` is `None` inside mixed content (no added whitespace); `default_in_scope` says
    /// whether the unprefixed namespace is `default_ns` (else none) at this point.
    fn write(
        &self,
        element: &Element,
        depth: Option<usize>,
        default_in_scope: bool,
        out: &mut String,
    ) {
        if let Some(d) = depth {
            indent(out, d);
        }
        out.push('<');
        self.element_name(&element.name, out);
        let mut scope = default_in_scope;
        match element.name.ns.as_deref() {
            None if default_in_scope => {
                out.push_str(" xmlns=\"\"");
                scope = false;
            }
            Some(ns) if ns == self.default_ns && !default_in_scope => {
                push_attr(out, "xmlns", self.default_ns);
                scope = true;
            }
            _ => {}
        }
        for attr in &element.attrs {
            out.push(' ');
            self.attr_name(&attr.name, out);
            out.push_str("=\"");
            escape_attr(&attr.value, out);
            out.push('"');
        }
        let has_elements = element.elements().next().is_some();
        if element.children.is_empty() {
            out.push_str("/>");
        } else if depth.is_none() || element.has_text() || !has_elements {
            out.push('>');
            for child in &element.children {
                match child {
                    Node::Text(t) => escape_text(t, out),
                    Node::Element(e) => self.write(e, None, scope, out),
                }
            }
            self.end_tag(element, out);
        } else {
            out.push_str(">\n");
            let d = depth.unwrap_or(0);
            for child in element.elements() {
                self.write(child, Some(d + 1), scope, out);
            }
            indent(out, d);
            self.end_tag(element, out);
        }
        if depth.is_some() {
            out.push('\n');
        }
    }

    fn end_tag(&self, element: &Element, out: &mut String) {
        out.push_str("</");
        self.element_name(&element.name, out);
        out.push('>');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(body: &str) -> String {
        parse(body.as_bytes()).unwrap_err().to_string()
    }

    #[test]
    fn parses_namespaces_attributes_and_text() {
        let root = parse(
            br#"<?xml version="1.0"?><a xmlns="urn:a" xmlns:b="urn:b" x="1" b:y="2">
            t&amp;u<![CDATA[<v>]]>&#x41;<b:c xml:lang="en"/></a>"#,
        )
        .unwrap();
        assert!(root.is("urn:a", "a"));
        assert_eq!(root.attr("x"), Some("1"));
        assert_eq!(root.attr_ns("urn:b", "y"), Some("2"));
        assert_eq!(root.text().trim(), "t&u<v>A");
        let c = root.child("urn:b", "c").unwrap();
        assert_eq!(c.attr_ns(NS_XML, "lang"), Some("en"));
    }

    #[test]
    fn default_namespace_can_be_undeclared() {
        let root = parse(br#"<a xmlns="urn:a"><b xmlns=""><c/></b></a>"#).unwrap();
        let b = root.elements().next().unwrap();
        assert_eq!(b.ns(), None);
        assert_eq!(b.elements().next().unwrap().ns(), None);
    }

    #[test]
    fn refuses_doctype_and_billion_laughs() {
        let laughs = r#"<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
]>
<lolz>&lol3;</lolz>"#;
        assert!(err(laughs).contains("DOCTYPE"), "{}", err(laughs));
        assert!(err("<!DOCTYPE a SYSTEM \"file:///etc/passwd\"><a/>").contains("DOCTYPE"));
    }

    #[test]
    fn refuses_undefined_entities() {
        assert!(err("<a>&lol;</a>").contains("undefined entity &lol;"));
        assert!(err("<a b='&lol;'/>").contains("bad reference"));
        assert!(err("<a>&#0;</a>").contains("character reference"));
    }

    #[test]
    fn refuses_deep_nesting() {
        let deep = "<a>".repeat(MAX_DEPTH + 1) + &"</a>".repeat(MAX_DEPTH + 1);
        assert!(err(&deep).contains("deeper than 32"));
        let ok = "<a>".repeat(MAX_DEPTH) + &"</a>".repeat(MAX_DEPTH);
        assert!(parse(ok.as_bytes()).is_ok());
        // Far deeper than the limit: refused without recursion trouble.
        let very = "<a>".repeat(10_000);
        assert!(err(&very).contains("deeper than 32"));
    }

    #[test]
    fn refuses_too_many_elements() {
        let many = format!("<a>{}</a>", "<b/>".repeat(MAX_ELEMENTS));
        assert!(err(&many).contains("more than 2048 elements"));
    }

    #[test]
    fn refuses_huge_attribute_and_too_many_attributes() {
        let huge = format!("<a b=\"{}\"/>", "x".repeat(MAX_ATTR_LEN + 1));
        assert!(err(&huge).contains("longer than 4096"));
        let attrs: String = (0..=MAX_ATTRIBUTES)
            .map(|i| format!(" a{i}=\"1\""))
            .collect();
        assert!(err(&format!("<a{attrs}/>")).contains("more than 64 attributes"));
    }

    #[test]
    fn refuses_non_utf8_and_utf16() {
        let e = parse(b"<a>\xff\xfe</a>").unwrap_err().to_string();
        assert!(e.contains("not valid UTF-8"), "{e}");
        let e = parse(b"\xff\xfe<\0a\0/\0>\0").unwrap_err().to_string();
        assert!(e.contains("UTF-16"), "{e}");
        let e = parse(b"<?xml version=\"1.0\" encoding=\"EBCDIC\"?><a/>")
            .unwrap_err()
            .to_string();
        assert!(e.contains("not supported"), "{e}");
    }

    #[test]
    fn latin1_is_converted() {
        let root = parse(b"<?xml version=\"1.0\" encoding=\"ISO-8859-1\"?><a>caf\xe9</a>").unwrap();
        assert_eq!(root.text(), "café");
    }

    #[test]
    fn refuses_truncated_documents() {
        for body in [
            "<a><b>",
            "<a><b></b>",
            "<a",
            "<a b=\"1",
            "<a><!-- x",
            "<a>&amp",
            "",
            "   ",
            "<?xml version=\"1.0\"?>",
        ] {
            let e = parse(body.as_bytes()).unwrap_err().to_string();
            assert!(
                e.contains("truncated") || e.contains("no root") || e.contains("';'"),
                "{body:?}: {e}"
            );
        }
    }

    #[test]
    fn refuses_bad_structure() {
        assert!(err("<a></b>").contains("</b> closes <a>"));
        assert!(err("<a/><b/>").contains("more than one root"));
        assert!(err("x<a/>").contains("outside the root"));
        assert!(err("<p:a/>").contains("prefix 'p' is not declared"));
        assert!(err("<a p:b='1'/>").contains("prefix 'p' is not declared"));
        assert!(err("<a b='1' b='2'/>").contains("attribute"));
        assert!(err("<a xmlns:p='urn:x' xmlns:q='urn:x' p:b='1' q:b='2'/>").contains("twice"));
        assert!(err("<a xmlns:p=''/>").contains("bound to nothing"));
        assert!(err("<a>\u{1}</a>").contains("control character"));
    }

    #[test]
    fn errors_are_single_short_lines() {
        let inputs: Vec<Vec<u8>> = vec![
            format!("<{}>", "a".repeat(5000)).into_bytes(),
            b"<a>\n\n</b>".to_vec(),
            format!("<a xmlns:{0}='u'><q{0}:x/></a>", "p".repeat(300)).into_bytes(),
            b"<a>&\r\nfoo;</a>".to_vec(),
        ];
        for body in inputs {
            let e = parse(&body).unwrap_err().to_string();
            assert!(!e.contains('\n') && !e.contains('\r'), "{e}");
            assert!(e.chars().count() <= 110, "{} chars: {e}", e.chars().count());
        }
    }

    #[test]
    fn escaping() {
        let mut s = String::new();
        escape_text("a<b>&c\u{1}", &mut s);
        assert_eq!(s, "a&lt;b&gt;&amp;c\u{fffd}");
        let mut s = String::new();
        escape_attr("\"x\"\n\t", &mut s);
        assert_eq!(s, "&quot;x&quot;&#10;&#9;");
    }

    #[test]
    fn escaping_keeps_the_runs_between_replacements_and_multibyte_text() {
        // Clean runs are copied whole: the text around and between replacements, at the
        // start and the end, and characters of 2-4 bytes, come out unchanged.
        let mut s = String::new();
        escape_attr(
            "sip:\u{e9}l\u{e8}ve@ex.com;a=\"b\"\u{1f4de}<\u{fffe}",
            &mut s,
        );
        assert_eq!(
            s,
            "sip:\u{e9}l\u{e8}ve@ex.com;a=&quot;b&quot;\u{1f4de}&lt;\u{fffd}"
        );
        let mut s = String::from("kept ");
        escape_text("&&plain\u{b}", &mut s);
        assert_eq!(s, "kept &amp;&amp;plain\u{fffd}");
        let mut s = String::new();
        escape_text("", &mut s);
        escape_attr("no escaping needed", &mut s);
        assert_eq!(s, "no escaping needed");
    }

    const WELL_KNOWN: &[(&str, &str)] = &[("urn:dm", "dm")];

    #[test]
    fn writer_gives_one_prefix_per_namespace() {
        // Two sources: `x` means urn:one in the first and urn:two in the second; urn:dm
        // is written `d:` in one and as a default namespace in the other.
        let a = parse(br#"<r xmlns="urn:root" xmlns:x="urn:one" xmlns:d="urn:dm"><x:e d:at="1"><d:f/></x:e></r>"#).unwrap();
        let b = parse(br#"<r xmlns="urn:root" xmlns:x="urn:two"><x:e><f xmlns="urn:dm">t</f></x:e><g xmlns=""/></r>"#).unwrap();
        let mut w = NsWriter::new("urn:root", WELL_KNOWN);
        let items: Vec<&Element> = a.elements().chain(b.elements()).collect();
        for e in &items {
            w.register(e);
        }
        let mut out = String::from("<r");
        w.write_declarations(&mut out);
        out.push_str(">\n");
        for e in &items {
            w.write_element(e, 1, &mut out);
        }
        out.push_str("</r>\n");
        assert_eq!(
            out,
            "<r xmlns=\"urn:root\" xmlns:x=\"urn:one\" xmlns:dm=\"urn:dm\" xmlns:ns1=\"urn:two\">\n  \
             <x:e dm:at=\"1\">\n    <dm:f/>\n  </x:e>\n  \
             <ns1:e>\n    <dm:f>t</dm:f>\n  </ns1:e>\n  \
             <g xmlns=\"\"/>\n</r>\n"
        );
        // And it reads back with the same expanded names.
        let back = parse(out.as_bytes()).unwrap();
        let kids: Vec<&Element> = back.elements().collect();
        assert!(kids[0].is("urn:one", "e"));
        assert_eq!(kids[0].attr_ns("urn:dm", "at"), Some("1"));
        assert!(kids[1].is("urn:two", "e"));
        assert!(kids[1].elements().next().unwrap().is("urn:dm", "f"));
        assert_eq!(kids[2].ns(), None);
    }
}
