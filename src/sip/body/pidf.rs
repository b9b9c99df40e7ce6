//! PIDF (RFC 3863) with RPID (RFC 4480) and the presence data model (RFC 4479): validation of
//! published documents, composition of several publications of one presentity into one
//! document, the idle `closed` document, and XPIDF (`application/xpidf+xml`) for old
//! firmware that only reads that.
//!
//! Composition ([`merge`]), newest publication first:
//! - every `<tuple>` is kept; a tuple id published by two sources: the newest one wins whole;
//! - every presentity-level `<note>` is kept once (same text and `xml:lang` = one note);
//! - every `<dm:person>` and `<dm:device>` is kept; one id published by two sources: the
//!   newest element wins whole. Persons are not merged child by child: mixing the
//!   activities of one source with the mood of another yields a state nobody published;
//! - anything else (other extensions) is kept as it is.
//!
//! Elements are copied as they were (whitespace re-indented where the content is elements
//! only); only namespace prefixes may change: all declarations move to the root, one prefix
//! per namespace (`dm`, `rpid`, `c`, `caps` for the common ones, else the source's prefix
//! when it is free, else `ns1`, `ns2`...), so sources that used different prefixes for one
//! namespace, or one prefix for different namespaces, still give a namespace-correct
//! document. (Prefixes inside attribute *values*, e.g. `xsi:type`, are not rewritten; PIDF
//! and RPID do not use them.)

use std::collections::HashSet;

use super::xml::{self, escape_attr, push_attr, Element, NsWriter};
use super::{quote, BodyError};

pub const NS_PIDF: &str = "urn:ietf:params:xml:ns:pidf";
pub const NS_DATA_MODEL: &str = "urn:ietf:params:xml:ns:pidf:data-model";
pub const NS_RPID: &str = "urn:ietf:params:xml:ns:pidf:rpid";
pub const NS_CIPID: &str = "urn:ietf:params:xml:ns:pidf:cipid";
pub const NS_CAPS: &str = "urn:ietf:params:xml:ns:pidf:caps";

/// Media type of PIDF.
pub const CONTENT_TYPE: &str = "application/pidf+xml";
/// Media type of XPIDF.
pub const XPIDF_CONTENT_TYPE: &str = "application/xpidf+xml";

/// Prefixes the composed document uses for well-known namespaces.
const WELL_KNOWN: &[(&str, &str)] = &[
    (NS_DATA_MODEL, "dm"),
    (NS_RPID, "rpid"),
    (NS_CIPID, "c"),
    (NS_CAPS, "caps"),
];

/// The tuple id of the document [`closed`] writes.
pub const CLOSED_TUPLE_ID: &str = "closed";

/// RFC 3863 §4.1.4 `<basic>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Basic {
    Open,
    Closed,
}

impl Basic {
    pub fn as_str(self) -> &'static str {
        match self {
            Basic::Open => "open",
            Basic::Closed => "closed",
        }
    }
}

/// A validated PIDF document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pidf {
    root: Element,
}

/// One `<tuple>` of a validated document.
#[derive(Debug, Clone, Copy)]
pub struct Tuple<'a> {
    element: &'a Element,
}

impl<'a> Tuple<'a> {
    pub fn id(&self) -> &'a str {
        self.element.attr("id").unwrap_or("")
    }

    /// The `<status><basic>`, when given.
    pub fn basic(&self) -> Option<Basic> {
        let status = self.element.child(NS_PIDF, "status")?;
        match status.child(NS_PIDF, "basic")?.text().trim() {
            "open" => Some(Basic::Open),
            "closed" => Some(Basic::Closed),
            _ => None,
        }
    }

    /// The `<contact>` URI, trimmed.
    pub fn contact(&self) -> Option<String> {
        let c = self.element.child(NS_PIDF, "contact")?;
        let text = c.text();
        let text = text.trim();
        (!text.is_empty()).then(|| text.to_string())
    }

    pub fn element(&self) -> &'a Element {
        self.element
    }
}

impl Pidf {
    /// The `entity` attribute (the presentity URI as the publisher wrote it).
    pub fn entity(&self) -> &str {
        self.root.attr("entity").unwrap_or("")
    }

    /// The `<presence>` element.
    pub fn root(&self) -> &Element {
        &self.root
    }

    pub fn tuples(&self) -> impl Iterator<Item = Tuple<'_>> {
        self.root
            .children_named(NS_PIDF, "tuple")
            .map(|element| Tuple { element })
    }
}

/// Parses and validates a PIDF document (RFC 3863 §4.1, RFC 4479 ids).
pub fn parse(body: &[u8]) -> Result<Pidf, BodyError> {
    let root = xml::parse(body)?;
    if !root.is(NS_PIDF, "presence") {
        return Err(if root.name.local == "presence" {
            BodyError::invalid(format!("<presence> is not in the PIDF namespace {NS_PIDF}"))
        } else {
            BodyError::invalid(format!(
                "root element is <{}>, not PIDF <presence>",
                quote(&root.name.qualified())
            ))
        });
    }
    let entity = root.attr("entity").map(str::trim).unwrap_or("");
    if entity.is_empty() {
        return Err(BodyError::invalid(
            "PIDF <presence> has no entity attribute",
        ));
    }
    // RFC 3863 §4.1.1 wants a URI; Kamailio's own PUBLISH writes `user1@127.0.0.1` (and
    // Kamailio accepts it): an `user@host` without a scheme is read as `sip:`.
    let sip_entity = if has_uri_scheme(entity) {
        None
    } else if entity.contains('@') {
        Some(format!("sip:{entity}"))
    } else {
        return Err(BodyError::invalid(format!(
            "PIDF entity '{}' is not a URI",
            quote(entity)
        )));
    };
    let mut tuple_ids: HashSet<&str> = HashSet::new();
    let mut dm_ids: HashSet<(&str, &str)> = HashSet::new();
    for child in root.elements() {
        if child.is(NS_PIDF, "tuple") {
            let id = validate_tuple(child)?;
            if !tuple_ids.insert(id) {
                return Err(BodyError::invalid(format!(
                    "PIDF tuple id '{}' appears twice",
                    quote(id)
                )));
            }
        } else if child.is(NS_DATA_MODEL, "person") || child.is(NS_DATA_MODEL, "device") {
            let kind = child.name.local.as_str();
            let id = child.attr("id").map(str::trim).unwrap_or("");
            if id.is_empty() {
                return Err(BodyError::invalid(format!("PIDF <dm:{kind}> has no id")));
            }
            if !dm_ids.insert((kind, id)) {
                return Err(BodyError::invalid(format!(
                    "PIDF {kind} id '{}' appears twice",
                    quote(id)
                )));
            }
        }
    }
    let mut root = root;
    if let Some(uri) = sip_entity {
        if let Some(a) = root
            .attrs
            .iter_mut()
            .find(|a| a.name.ns.is_none() && a.name.local == "entity")
        {
            a.value = uri;
        }
    }
    Ok(Pidf { root })
}

/// Whether `s` starts with a URI scheme and its colon (RFC 3986 §3.1:
/// `ALPHA *( ALPHA / DIGIT / "+" / "-" / "." ) ":"`); `user@host:5060` does not.
fn has_uri_scheme(s: &str) -> bool {
    let Some((scheme, _)) = s.split_once(':') else {
        return false;
    };
    let mut chars = scheme.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
}

/// Checks a `<tuple>` (RFC 3863 §4.1.3-§4.1.5) and returns its id.
fn validate_tuple(tuple: &Element) -> Result<&str, BodyError> {
    let id = tuple.attr("id").map(str::trim).unwrap_or("");
    if id.is_empty() {
        return Err(BodyError::invalid("PIDF <tuple> has no id attribute"));
    }
    let mut statuses = tuple.children_named(NS_PIDF, "status");
    let Some(status) = statuses.next() else {
        return Err(BodyError::invalid(format!(
            "PIDF tuple '{}' has no <status>",
            quote(id)
        )));
    };
    if statuses.next().is_some() {
        return Err(BodyError::invalid(format!(
            "PIDF tuple '{}' has more than one <status>",
            quote(id)
        )));
    }
    let mut basics = status.children_named(NS_PIDF, "basic");
    if let Some(basic) = basics.next() {
        let value = basic.text();
        let value = value.trim();
        if value != "open" && value != "closed" {
            return Err(BodyError::invalid(format!(
                "PIDF <basic> is '{}', not open or closed",
                quote(value)
            )));
        }
        if basics.next().is_some() {
            return Err(BodyError::invalid(format!(
                "PIDF tuple '{}' has more than one <basic>",
                quote(id)
            )));
        }
    }
    let mut contacts = tuple.children_named(NS_PIDF, "contact");
    if let Some(contact) = contacts.next() {
        if let Some(priority) = contact.attr("priority") {
            if !valid_priority(priority.trim()) {
                return Err(BodyError::invalid(format!(
                    "PIDF contact priority '{}' is not a number from 0 to 1",
                    quote(priority)
                )));
            }
        }
        if contacts.next().is_some() {
            return Err(BodyError::invalid(format!(
                "PIDF tuple '{}' has more than one <contact>",
                quote(id)
            )));
        }
    }
    Ok(id)
}

/// RFC 3863 §4.1.5 `qvalue`: a decimal from 0 to 1, at most three decimals.
fn valid_priority(p: &str) -> bool {
    let (int, frac) = p.split_once('.').unwrap_or((p, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if int.is_empty() || !digits(int) || !digits(frac) || frac.len() > 3 {
        return false;
    }
    match int.trim_start_matches('0') {
        "" => true,
        "1" => frac.bytes().all(|b| b == b'0'),
        _ => false,
    }
}

/// The elements of several documents as [`merge`] composes them, newest first.
struct Composed<'a> {
    tuples: Vec<&'a Element>,
    notes: Vec<&'a Element>,
    rest: Vec<&'a Element>,
}

fn compose(docs: &[Pidf]) -> Composed<'_> {
    let mut composed = Composed {
        tuples: Vec::new(),
        notes: Vec::new(),
        rest: Vec::new(),
    };
    let mut tuple_ids: HashSet<&str> = HashSet::new();
    let mut notes: HashSet<(Option<&str>, String)> = HashSet::new();
    let mut dm_ids: HashSet<(&str, &str)> = HashSet::new();
    for doc in docs.iter().rev() {
        for child in doc.root.elements() {
            if child.is(NS_PIDF, "tuple") {
                if tuple_ids.insert(child.attr("id").unwrap_or("").trim()) {
                    composed.tuples.push(child);
                }
            } else if child.is(NS_PIDF, "note") {
                let lang = child.attr_ns(xml::NS_XML, "lang");
                if notes.insert((lang, child.text().trim().to_string())) {
                    composed.notes.push(child);
                }
            } else if child.is(NS_DATA_MODEL, "person") || child.is(NS_DATA_MODEL, "device") {
                let key = (
                    child.name.local.as_str(),
                    child.attr("id").unwrap_or("").trim(),
                );
                if dm_ids.insert(key) {
                    composed.rest.push(child);
                }
            } else {
                composed.rest.push(child);
            }
        }
    }
    composed
}

/// One document for `entity` from the publications `docs`, ordered oldest to newest (later
/// entries win; see the module notes). No documents: [`closed`].
pub fn merge(entity: &str, docs: &[Pidf]) -> String {
    if docs.is_empty() {
        return closed(entity);
    }
    let composed = compose(docs);
    let all = || {
        composed
            .tuples
            .iter()
            .chain(&composed.notes)
            .chain(&composed.rest)
    };
    let mut writer = NsWriter::new(NS_PIDF, WELL_KNOWN);
    for element in all() {
        writer.register(element);
    }
    let mut out = String::with_capacity(256 + docs.len() * 512);
    out.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<presence");
    writer.write_declarations(&mut out);
    push_attr(&mut out, "entity", entity);
    out.push_str(">\n");
    for element in all() {
        writer.write_element(element, 1, &mut out);
    }
    out.push_str("</presence>\n");
    out
}

/// The idle document: one tuple, basic `closed`.
pub fn closed(entity: &str) -> String {
    let mut out = String::with_capacity(200 + entity.len());
    out.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<presence");
    push_attr(&mut out, "xmlns", NS_PIDF);
    push_attr(&mut out, "entity", entity);
    out.push_str(">\n  <tuple");
    push_attr(&mut out, "id", CLOSED_TUPLE_ID);
    out.push_str(
        ">\n    <status>\n      <basic>closed</basic>\n    </status>\n  </tuple>\n</presence>\n",
    );
    out
}

/// One `<tuple>` of a document [`document`] writes (RFC 3863 §4.1.3-§4.1.5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TupleSpec {
    /// The tuple id (an XML NCName: starts with a letter or `_`).
    pub id: String,
    pub basic: Basic,
    /// The `<contact>` URI, if any.
    pub contact: Option<String>,
    /// The contact's `priority`, in thousandths (a SIP q-value: 0..=1000).
    pub priority: Option<u16>,
}

/// A q-value in thousandths as RFC 3863 §4.1.5 writes it: `1`, `0.5`, `0.05`, `0`.
pub fn priority_text(q: u16) -> String {
    match q.min(1000) {
        1000 => "1".into(),
        0 => "0".into(),
        q => {
            let frac = format!("{q:03}");
            format!("0.{}", frac.trim_end_matches('0'))
        }
    }
}

/// A document of our own with the given tuples, in order (what `pua_usrloc` publishes).
/// No tuples: [`closed`].
pub fn document(entity: &str, tuples: &[TupleSpec]) -> String {
    if tuples.is_empty() {
        return closed(entity);
    }
    let mut out = String::with_capacity(128 + entity.len() + tuples.len() * 160);
    out.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<presence");
    push_attr(&mut out, "xmlns", NS_PIDF);
    push_attr(&mut out, "entity", entity);
    out.push_str(">\n");
    for t in tuples {
        out.push_str("  <tuple");
        push_attr(&mut out, "id", &t.id);
        out.push_str(">\n    <status>\n      <basic>");
        out.push_str(t.basic.as_str());
        out.push_str("</basic>\n    </status>\n");
        if let Some(c) = &t.contact {
            out.push_str("    <contact");
            if let Some(q) = t.priority {
                push_attr(&mut out, "priority", &priority_text(q));
            }
            out.push('>');
            xml::escape_text(c, &mut out);
            out.push_str("</contact>\n");
        }
        out.push_str("  </tuple>\n");
    }
    out.push_str("</presence>\n");
    out
}

/// XPIDF for `entity` from a composed PIDF document (as [`merge`] writes it). A document
/// that does not parse counts as no document (closed).
pub fn to_xpidf(entity: &str, merged_doc: &str) -> String {
    match parse(merged_doc.as_bytes()) {
        Ok(doc) => xpidf(entity, std::slice::from_ref(&doc)),
        Err(_) => xpidf(entity, &[]),
    }
}

/// XPIDF for `entity` straight from the publications (oldest to newest, as for [`merge`]),
/// without writing the PIDF first.
///
/// The shape older Polycom firmware reads, as SIP servers have written it since SER's `pa`
/// module (without the DOCTYPE line those add): one `<atom>` whose `<address>` is the
/// contact of the first open tuple (newest first; else of the first tuple; else the
/// entity), `status` open when any tuple is open, `msnsubstatus` online/offline to match.
pub fn xpidf(entity: &str, docs: &[Pidf]) -> String {
    let composed = compose(docs);
    let tuples: Vec<Tuple<'_>> = composed
        .tuples
        .iter()
        .map(|&element| Tuple { element })
        .collect();
    let open = tuples.iter().find(|t| t.basic() == Some(Basic::Open));
    let chosen = open.or(tuples.first());
    let atom_id = chosen
        .map(|t| t.id())
        .filter(|id| !id.is_empty())
        .unwrap_or("1");
    let address = chosen
        .and_then(|t| t.contact())
        .unwrap_or_else(|| entity.to_string());
    let (status, substatus) = if open.is_some() {
        ("open", "online")
    } else {
        ("closed", "offline")
    };
    let mut out = String::with_capacity(256 + entity.len() + address.len());
    out.push_str("<?xml version=\"1.0\"?>\n<presence>\n<presentity uri=\"");
    escape_attr(entity, &mut out);
    out.push_str(";method=SUBSCRIBE\"/>\n<atom");
    push_attr(&mut out, "id", atom_id);
    out.push_str(">\n<address");
    push_attr(&mut out, "uri", &address);
    out.push_str(" priority=\"0.8\">\n<status");
    push_attr(&mut out, "status", status);
    out.push_str("/>\n<msnsubstatus");
    push_attr(&mut out, "substatus", substatus);
    out.push_str("/>\n</address>\n</atom>\n</presence>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The body of a captured SIP message (after the first empty line).
    pub(crate) fn sip_body(message: &str) -> &str {
        message.split_once("\n\n").map(|(_, b)| b).unwrap_or("")
    }

    const LINPHONE: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/fixtures/bodies/captures/linphone-desktop-4.2.3-publish-pidf.sip"
    ));
    const ZOIPER: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/fixtures/bodies/captures/zoiper-3.3-publish-pidf-PARTIAL-headers.sip"
    ));

    fn golden(name: &str) -> String {
        let path = format!(
            "{}/fixtures/bodies/golden/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    fn doc(body: &str) -> Pidf {
        parse(body.as_bytes()).unwrap_or_else(|e| panic!("{e}: {body}"))
    }

    fn err(body: &str) -> String {
        parse(body.as_bytes()).unwrap_err().to_string()
    }

    const ENTITY: &str = "sip:alice@example.com";

    #[test]
    fn real_publications_parse() {
        let l = doc(sip_body(LINPHONE));
        assert_eq!(l.entity(), "sip:CPBX-1234567890@pbx.easybell.de");
        let t = l.tuples().next().unwrap();
        assert_eq!(t.id(), "tnntnv");
        assert_eq!(t.basic(), Some(Basic::Open));
        assert_eq!(
            t.contact().as_deref(),
            Some("sip:CPBX-1234567890@pbx.easybell.de")
        );
        // Zoiper's lines end in a space, also inside the start tags.
        let z_body = sip_body(ZOIPER);
        assert!(z_body.contains("\"maria\" > \n"));
        let z = doc(z_body);
        assert_eq!(z.entity(), "sip:alice@***.***.com;transport=TCP");
        assert_eq!(z.tuples().next().unwrap().basic(), Some(Basic::Open));
    }

    #[test]
    fn rfc3863_4_1_1_root_is_presence_in_the_pidf_namespace() {
        assert!(err("<presence entity='sip:a@b'/>").contains("not in the PIDF namespace"));
        assert!(
            err("<presence xmlns='urn:ietf:params:xml:ns:pidfx' entity='sip:a@b'/>")
                .contains("not in the PIDF namespace")
        );
        let e = err("<dialog-info xmlns='urn:ietf:params:xml:ns:dialog-info'/>");
        assert!(
            e.contains("root element is <dialog-info>, not PIDF <presence>"),
            "{e}"
        );
        // XPIDF sent as PIDF: no namespace and a DOCTYPE.
        let e = err("<?xml version=\"1.0\"?>\n<!DOCTYPE presence PUBLIC \"-//IETF//DTD RFCxxxx XPIDF 1.0//EN\" \"xpidf.dtd\">\n<presence><presentity uri=\"sip:a@b\"/></presence>");
        assert!(e.contains("DOCTYPE"), "{e}");
    }

    #[test]
    fn rfc3863_4_1_2_entity_is_required() {
        assert!(err(&format!("<presence xmlns='{NS_PIDF}'/>")).contains("no entity"));
        assert!(err(&format!("<presence xmlns='{NS_PIDF}' entity=' '/>")).contains("no entity"));
        assert!(
            err(&format!("<presence xmlns='{NS_PIDF}' entity='alice'/>")).contains("not a URI")
        );
        assert!(
            parse(format!("<presence xmlns='{NS_PIDF}' entity='pres:a@b'/>").as_bytes()).is_ok()
        );
    }

    fn with_tuple(tuple: &str) -> String {
        format!("<presence xmlns='{NS_PIDF}' entity='sip:a@b'>{tuple}</presence>")
    }

    #[test]
    fn rfc3863_4_1_3_tuple_needs_id() {
        let e = err(&with_tuple(
            "<tuple><status><basic>open</basic></status></tuple>",
        ));
        assert_eq!(e, "Bad Request: PIDF <tuple> has no id attribute");
    }

    #[test]
    fn rfc3863_4_1_3_tuple_ids_are_unique() {
        let t = "<tuple id='a'><status/></tuple>";
        assert!(err(&with_tuple(&format!("{t}{t}"))).contains("tuple id 'a' appears twice"));
    }

    #[test]
    fn rfc3863_4_1_4_tuple_needs_one_status() {
        assert!(err(&with_tuple("<tuple id='a'/>")).contains("tuple 'a' has no <status>"));
        assert!(err(&with_tuple("<tuple id='a'><status/><status/></tuple>"))
            .contains("more than one <status>"));
        // A status without basic is valid (other status extensions only).
        assert!(parse(with_tuple("<tuple id='a'><status/></tuple>").as_bytes()).is_ok());
    }

    #[test]
    fn rfc3863_4_1_4_basic_is_open_or_closed() {
        let e = err(&with_tuple(
            "<tuple id='a'><status><basic>busy</basic></status></tuple>",
        ));
        assert_eq!(e, "Bad Request: PIDF <basic> is 'busy', not open or closed");
        assert!(parse(
            with_tuple("<tuple id='a'><status><basic>\n closed \n</basic></status></tuple>")
                .as_bytes()
        )
        .is_ok());
        assert!(err(&with_tuple(
            "<tuple id='a'><status><basic>open</basic><basic>open</basic></status></tuple>"
        ))
        .contains("more than one <basic>"));
    }

    #[test]
    fn rfc3863_4_1_5_contact_priority_is_a_qvalue() {
        for good in ["0", "1", "0.8", "1.000", "0.123", "00.5"] {
            let t = format!(
                "<tuple id='a'><status/><contact priority='{good}'>sip:a@b</contact></tuple>"
            );
            assert!(parse(with_tuple(&t).as_bytes()).is_ok(), "{good}");
        }
        for bad in ["1.1", "2", "-0.5", "0.1234", "high", ""] {
            let t = format!(
                "<tuple id='a'><status/><contact priority='{bad}'>sip:a@b</contact></tuple>"
            );
            assert!(err(&with_tuple(&t)).contains("priority"), "{bad}");
        }
    }

    #[test]
    fn rfc4479_person_and_device_need_ids() {
        let body = format!(
            "<presence xmlns='{NS_PIDF}' xmlns:dm='{NS_DATA_MODEL}' entity='sip:a@b'><dm:person/></presence>"
        );
        assert!(err(&body).contains("<dm:person> has no id"));
        let body = format!(
            "<presence xmlns='{NS_PIDF}' xmlns:dm='{NS_DATA_MODEL}' entity='sip:a@b'><dm:device id='d'/><dm:device id='d'/></presence>"
        );
        assert!(err(&body).contains("device id 'd' appears twice"));
    }

    #[test]
    fn hostile_input_is_refused_with_a_reason() {
        let deep = format!("{}{}", "<presence>".repeat(40), "</presence>".repeat(40));
        assert!(err(&deep).contains("deeper than 32"));
        assert!(err(
            "<presence xmlns='urn:ietf:params:xml:ns:pidf' entity='sip:a@b'><tuple id='a'>"
        )
        .contains("truncated"));
        let huge = format!(
            "<presence xmlns='{NS_PIDF}' entity='sip:{}@b'/>",
            "a".repeat(10_000)
        );
        assert!(err(&huge).contains("longer than 4096"));
        assert!(
            parse(b"<presence xmlns='urn:ietf:params:xml:ns:pidf' entity='sip:\xc0@b'/>")
                .unwrap_err()
                .to_string()
                .contains("UTF-8")
        );
        let big = vec![b' '; super::super::MAX_BODY_LEN + 1];
        assert!(matches!(parse(&big), Err(BodyError::TooLarge(..))));
    }

    #[test]
    fn golden_merge_of_linphone_and_zoiper() {
        // Linphone published first, Zoiper later: Zoiper's tuple comes first.
        let docs = [doc(sip_body(LINPHONE)), doc(sip_body(ZOIPER))];
        let merged = merge(ENTITY, &docs);
        assert_eq!(merged, golden("pidf-merged-linphone-zoiper.xml"));
        let back = doc(&merged);
        assert_eq!(back.entity(), ENTITY);
        let ids: Vec<&str> = back.tuples().map(|t| t.id()).collect();
        assert_eq!(ids, ["maria", "tnntnv"]);
    }

    #[test]
    fn golden_closed() {
        assert_eq!(closed(ENTITY), golden("pidf-closed.xml"));
        let back = doc(&closed(ENTITY));
        assert_eq!(back.tuples().next().unwrap().basic(), Some(Basic::Closed));
        assert_eq!(merge(ENTITY, &[]), closed(ENTITY));
    }

    #[test]
    fn golden_xpidf() {
        let docs = [doc(sip_body(LINPHONE)), doc(sip_body(ZOIPER))];
        let x = xpidf(ENTITY, &docs);
        assert_eq!(x, golden("xpidf-open.xml"));
        assert_eq!(to_xpidf(ENTITY, &merge(ENTITY, &docs)), x);
        let c = to_xpidf(ENTITY, &closed(ENTITY));
        assert!(c.contains("<status status=\"closed\"/>\n<msnsubstatus substatus=\"offline\"/>"));
        assert!(c.contains("<address uri=\"sip:alice@example.com\" priority=\"0.8\">"));
        // Well-formed.
        assert!(xml::parse(x.as_bytes()).is_ok());
    }

    #[test]
    fn merge_newest_tuple_wins() {
        let older = doc(&with_tuple("<tuple id='t'><status><basic>open</basic></status></tuple><tuple id='u'><status><basic>open</basic></status></tuple>"));
        let newer = doc(&with_tuple(
            "<tuple id='t'><status><basic>closed</basic></status></tuple>",
        ));
        let merged = doc(&merge(ENTITY, &[older, newer]));
        let tuples: Vec<(&str, Option<Basic>)> =
            merged.tuples().map(|t| (t.id(), t.basic())).collect();
        assert_eq!(
            tuples,
            [("t", Some(Basic::Closed)), ("u", Some(Basic::Open))]
        );
    }

    #[test]
    fn merge_persons_newest_per_id_and_notes_once() {
        let a = doc(&format!(
            "<presence xmlns='{NS_PIDF}' xmlns:dm='{NS_DATA_MODEL}' xmlns:rpid='{NS_RPID}' entity='sip:a@b'>\
             <note>Busy</note>\
             <dm:person id='p1'><rpid:activities><rpid:away/></rpid:activities></dm:person>\
             <dm:person id='p2'><dm:note>two</dm:note></dm:person></presence>"
        ));
        let b = doc(&format!(
            "<presence xmlns='{NS_PIDF}' xmlns:d='{NS_DATA_MODEL}' xmlns:r='{NS_RPID}' entity='sip:a@b'>\
             <note>Busy</note><note xml:lang='fr'>Occupé</note>\
             <d:person id='p1'><r:activities><r:on-the-phone/></r:activities></d:person></presence>"
        ));
        let merged = merge(ENTITY, &[a, b]);
        let back = doc(&merged);
        let persons: Vec<&Element> = back
            .root()
            .children_named(NS_DATA_MODEL, "person")
            .collect();
        assert_eq!(persons.len(), 2);
        assert_eq!(persons[0].attr("id"), Some("p1"));
        let activities = persons[0].child(NS_RPID, "activities").unwrap();
        assert!(activities.child(NS_RPID, "on-the-phone").is_some());
        assert_eq!(persons[1].attr("id"), Some("p2"));
        let notes: Vec<String> = back
            .root()
            .children_named(NS_PIDF, "note")
            .map(|n| n.text().into_owned())
            .collect();
        assert_eq!(notes, ["Busy", "Occupé"]);
        assert!(merged.contains("<note xml:lang=\"fr\">Occupé</note>"));
        assert!(merged.contains("<dm:person id=\"p1\">"), "{merged}");
    }

    #[test]
    fn merge_keeps_namespaces_correct_across_prefix_clashes() {
        // `p` is RPID in one publication and the data model in the other; the data model
        // also comes as a default namespace; an unknown extension uses `dm` as its prefix.
        let a = doc(&format!(
            "<presence xmlns='{NS_PIDF}' xmlns:p='{NS_RPID}' xmlns:dm='urn:example:ext' entity='sip:a@b'>\
             <tuple id='a'><status><basic>open</basic><dm:x p:y='1'/></status></tuple>\
             <p:unknown-top/></presence>"
        ));
        let b = doc(&format!(
            "<presence xmlns='{NS_PIDF}' xmlns:p='{NS_DATA_MODEL}' entity='sip:a@b'>\
             <p:person id='me'><activities xmlns='{NS_RPID}'><busy/></activities></p:person>\
             <device xmlns='{NS_DATA_MODEL}' id='d1'><deviceID>urn:x</deviceID></device></presence>"
        ));
        let merged = merge(ENTITY, &[a, b]);
        let back = xml::parse(merged.as_bytes()).expect("well-formed");
        let kids: Vec<&Element> = back.elements().collect();
        let tuple = kids.iter().find(|e| e.is(NS_PIDF, "tuple")).unwrap();
        let x = tuple
            .child(NS_PIDF, "status")
            .unwrap()
            .child("urn:example:ext", "x")
            .unwrap();
        assert_eq!(x.attr_ns(NS_RPID, "y"), Some("1"));
        assert!(kids.iter().any(|e| e.is(NS_RPID, "unknown-top")));
        let person = kids.iter().find(|e| e.is(NS_DATA_MODEL, "person")).unwrap();
        let act = person.child(NS_RPID, "activities").unwrap();
        assert!(act.child(NS_RPID, "busy").is_some());
        let device = kids.iter().find(|e| e.is(NS_DATA_MODEL, "device")).unwrap();
        assert_eq!(
            device.child(NS_DATA_MODEL, "deviceID").unwrap().text(),
            "urn:x"
        );
        // One declaration per namespace, well-known prefixes for the known ones.
        assert!(merged.contains(&format!("xmlns:rpid=\"{NS_RPID}\"")));
        assert!(merged.contains(&format!("xmlns:dm=\"{NS_DATA_MODEL}\"")));
        assert!(merged.contains("xmlns:ns1=\"urn:example:ext\""), "{merged}");
        assert_eq!(merged.matches("xmlns:").count(), 3, "{merged}");
        // And it validates as PIDF again.
        assert!(parse(merged.as_bytes()).is_ok());
    }

    #[test]
    fn merge_escapes_entity_and_text() {
        let a = doc(&with_tuple(
            "<tuple id='a'><status/><note>a &lt;b&gt; &amp; c</note></tuple>",
        ));
        let merged = merge("sip:a&\"b\"@c", &[a]);
        assert!(merged.contains("entity=\"sip:a&amp;&quot;b&quot;@c\""));
        assert!(merged.contains("<note>a &lt;b&gt; &amp; c</note>"));
        assert!(parse(merged.as_bytes()).is_ok());
    }

    #[test]
    fn rfc3863_4_1_documents_we_write_validate() {
        let tuples = vec![
            TupleSpec {
                id: "ul-1".into(),
                basic: Basic::Open,
                contact: Some("sip:1001@192.0.2.1:5060;transport=udp&x=<y>".into()),
                priority: Some(500),
            },
            TupleSpec {
                id: "ul-2".into(),
                basic: Basic::Open,
                contact: Some("sip:1001@192.0.2.2".into()),
                priority: Some(1000),
            },
        ];
        let doc = document("sip:1001@example.test", &tuples);
        let parsed = parse(doc.as_bytes()).expect("valid PIDF");
        assert_eq!(parsed.entity(), "sip:1001@example.test");
        let got: Vec<(String, Option<Basic>, Option<String>)> = parsed
            .tuples()
            .map(|t| (t.id().to_string(), t.basic(), t.contact()))
            .collect();
        assert_eq!(
            got[0].2.as_deref(),
            Some("sip:1001@192.0.2.1:5060;transport=udp&x=<y>")
        );
        assert_eq!(got[1].0, "ul-2");
        assert!(
            doc.contains("priority=\"0.5\"") && doc.contains("priority=\"1\""),
            "{doc}"
        );
        assert_eq!(document("sip:a@b", &[]), closed("sip:a@b"));
        for (q, t) in [
            (0, "0"),
            (1, "0.001"),
            (50, "0.05"),
            (123, "0.123"),
            (1000, "1"),
            (1200, "1"),
        ] {
            assert_eq!(priority_text(q), t);
            assert!(valid_priority(t));
        }
    }

    /// Issue 11: RFC 3863 §4.1.1 wants a URI, but Kamailio's own PUBLISH writes the entity
    /// without a scheme (and Kamailio accepts it): `user@host` is read as `sip:user@host`.
    #[test]
    fn rfc3863_4_1_1_scheme_less_entity_is_read_as_sip() {
        let body = |e: &str| {
            format!(
                "<presence xmlns='urn:ietf:params:xml:ns:pidf' entity='{e}'><tuple id='t'><status><basic>open</basic></status></tuple></presence>"
            )
        };
        for (written, read) in [
            ("user1@127.0.0.1", "sip:user1@127.0.0.1"),
            ("user1@127.0.0.1:5060", "sip:user1@127.0.0.1:5060"),
            ("sip:user1@127.0.0.1", "sip:user1@127.0.0.1"),
            ("pres:user1@example.test", "pres:user1@example.test"),
            ("SIPS:user1@example.test", "SIPS:user1@example.test"),
        ] {
            assert_eq!(doc(&body(written)).entity(), read, "{written}");
        }
        // Still refused: no scheme and no user@host.
        assert!(err(&body("user1")).contains("is not a URI"));
        assert!(err(&body("1x:y")).contains("is not a URI"));
    }
}
