//! parse → print → parse must give the same message (plus the Content-Length the printer adds
//! when there was none); validate() and frame_stream() must not panic on anything.
#![no_main]

use busylamp::sip::{frame_stream, parse_message, HasHeaders, HeaderName, Limits, Message};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = Limits::default();
    let _ = frame_stream(data, &limits);
    let Ok(m) = parse_message(data, &limits) else {
        return;
    };
    match &m {
        Message::Request(r) => {
            let _ = r.validate();
            let _ = r.max_forwards();
            let _ = (r.vias(), r.contacts(), r.from_hdr(), r.to_hdr(), r.cseq(), r.expires());
        }
        Message::Response(r) => {
            let _ = (r.vias(), r.contacts(), r.from_hdr(), r.to_hdr(), r.cseq());
        }
    }
    let mut expected = m.clone();
    let (headers, len) = match &mut expected {
        Message::Request(r) => (&mut r.headers, r.body.len()),
        Message::Response(r) => (&mut r.headers, r.body.len()),
    };
    if !headers.has(HeaderName::ContentLength) {
        headers.push(HeaderName::ContentLength, len.to_string());
    }
    // Printing may grow a message past the limits; reparse without them.
    let roomy = Limits { max_message: 1 << 24, max_headers: 1 << 16, max_line: 1 << 24 };
    let again = parse_message(&m.to_bytes(), &roomy).expect("printed message must parse");
    assert_eq!(again, expected);
});
