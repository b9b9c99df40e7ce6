//! The SIP codec: pure parsing and printing, no sockets, no clock.

pub mod body;
pub mod digest;
pub mod header;
pub mod message;
pub mod parse;
pub mod text;
pub mod uri;

pub use header::{CSeq, ContactValue, HeaderName, NameAddr, Via};
pub use message::{HasHeaders, Header, Headers, Message, MessageError, Request, Response};
pub use parse::{frame_stream, parse_message, Frame, Limits, ParseError, ParseFailure};
pub use uri::{Host, SipUri, Uri};
