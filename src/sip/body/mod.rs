//! Event-package bodies: parsing (with validation) and printing of PIDF (RFC 3863, with RPID
//! RFC 4480 and the data model RFC 4479), XPIDF, dialog-info (RFC 4235, with the BLA
//! `x-line-id`/`appearance` parameters), watcherinfo (RFC 3858) and message-summary
//! (RFC 3842). Pure: no I/O.

pub mod watcherinfo;

/// Why a body was refused; the message is the reason phrase of the 400.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    #[error("Bad Request: body is not well-formed XML: {0}")]
    Xml(String),
    #[error("Bad Request: {0}")]
    Invalid(String),
    #[error("Bad Request: body is {0} bytes, more than {1} allowed")]
    TooLarge(usize, usize),
}
