//! Hold detection in an SDP offer (RFC 4566, RFC 3264 §8.4, RFC 2543's `c=0.0.0.0`).
//!
//! A party holds when the offer it sends in a re-INVITE (or UPDATE) asks the other side not to
//! send media: direction `sendonly` or `inactive`, or the RFC 2543 connection address
//! `0.0.0.0`. Attributes are read as RFC 4566 §5.13 defines: a media-level direction overrides
//! the session-level one, and `c=` likewise; a stream with port 0 is disabled and not looked
//! at. When the offer has audio, only the audio streams decide (a phone that sends one-way
//! video is not holding); otherwise any stream does.

/// Direction of a stream (RFC 3264 §5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dir {
    SendRecv,
    SendOnly,
    RecvOnly,
    Inactive,
}

#[derive(Default)]
struct Section {
    dir: Option<Dir>,
    /// `c=` names the RFC 2543 hold address.
    zero_addr: Option<bool>,
    audio: bool,
    disabled: bool,
}

/// Whether the sender of this SDP is holding; `None` when the body is not SDP (no `v=`
/// line): nothing can be said, so the hold state does not change.
pub fn holds(sdp: &[u8]) -> Option<bool> {
    let text = String::from_utf8_lossy(sdp);
    let mut lines = text
        .split('\n')
        .map(|l| l.trim_end_matches('\r'))
        .filter(|l| !l.trim().is_empty());
    if !lines.next()?.trim_start().starts_with("v=") {
        return None;
    }
    let mut session = Section::default();
    let mut media: Vec<Section> = Vec::new();
    for line in lines {
        let Some((kind, value)) = line.split_once('=') else {
            continue;
        };
        let value = value.trim();
        match kind.trim() {
            "m" => {
                let mut f = value.split_ascii_whitespace();
                let name = f.next().unwrap_or("");
                // "49170" or "49170/2": port 0 disables the stream (RFC 3264 §6).
                let port = f.next().unwrap_or("").split('/').next().unwrap_or("");
                media.push(Section {
                    audio: name.eq_ignore_ascii_case("audio"),
                    disabled: port == "0",
                    ..Section::default()
                });
            }
            "c" => {
                let zero = value
                    .split_ascii_whitespace()
                    .nth(2)
                    .is_some_and(|addr| addr.split('/').next() == Some("0.0.0.0"));
                media.last_mut().unwrap_or(&mut session).zero_addr = Some(zero);
            }
            "a" => {
                let dir = match value.to_ascii_lowercase().as_str() {
                    "sendrecv" => Dir::SendRecv,
                    "sendonly" => Dir::SendOnly,
                    "recvonly" => Dir::RecvOnly,
                    "inactive" => Dir::Inactive,
                    _ => continue,
                };
                media.last_mut().unwrap_or(&mut session).dir = Some(dir);
            }
            _ => {}
        }
    }
    let held = |s: &Section| {
        let dir = s.dir.or(session.dir).unwrap_or(Dir::SendRecv);
        matches!(dir, Dir::SendOnly | Dir::Inactive)
            || s.zero_addr.or(session.zero_addr).unwrap_or(false)
    };
    if media.is_empty() {
        return Some(held(&session));
    }
    let live: Vec<&Section> = media.iter().filter(|s| !s.disabled).collect();
    let audio: Vec<&Section> = live.iter().copied().filter(|s| s.audio).collect();
    let decide = if audio.is_empty() { live } else { audio };
    Some(decide.into_iter().any(held))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An SDP offer as a phone sends it, with `extra` session lines and `media` lines.
    fn offer(session: &str, media: &str) -> Vec<u8> {
        format!(
            "v=0\r\no=- 3724394400 3724394401 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\n{session}m=audio 49170 RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\n{media}"
        )
        .into_bytes()
    }

    #[test]
    fn rfc3264_8_4_sendonly_and_inactive_hold() {
        assert_eq!(holds(&offer("", "a=sendonly\r\n")), Some(true));
        assert_eq!(holds(&offer("", "a=inactive\r\n")), Some(true));
        assert_eq!(holds(&offer("a=sendonly\r\n", "")), Some(true));
        assert_eq!(holds(&offer("", "a=sendrecv\r\n")), Some(false));
        assert_eq!(holds(&offer("", "a=recvonly\r\n")), Some(false));
        assert_eq!(holds(&offer("", "")), Some(false));
    }

    #[test]
    fn rfc4566_5_13_media_level_overrides_session_level() {
        assert_eq!(
            holds(&offer("a=sendonly\r\n", "a=sendrecv\r\n")),
            Some(false)
        );
        assert_eq!(
            holds(&offer("a=sendrecv\r\n", "a=inactive\r\n")),
            Some(true)
        );
    }

    #[test]
    fn rfc2543_hold_address() {
        let sdp = String::from_utf8(offer("", "")).unwrap();
        let old = sdp.replace("c=IN IP4 192.0.2.10", "c=IN IP4 0.0.0.0");
        assert_eq!(holds(old.as_bytes()), Some(true));
        // Media-level c= overrides.
        let media = offer("", "c=IN IP4 0.0.0.0\r\n");
        assert_eq!(holds(&media), Some(true));
        let back = String::from_utf8(offer("", "c=IN IP4 192.0.2.11\r\n"))
            .unwrap()
            .replace("c=IN IP4 192.0.2.10", "c=IN IP4 0.0.0.0");
        assert_eq!(holds(back.as_bytes()), Some(false));
    }

    #[test]
    fn disabled_streams_and_one_way_video_do_not_hold() {
        let video_off = offer("", "a=sendrecv\r\nm=video 0 RTP/AVP 96\r\na=inactive\r\n");
        assert_eq!(holds(&video_off), Some(false));
        let one_way = offer(
            "",
            "a=sendrecv\r\nm=video 51372 RTP/AVP 96\r\na=sendonly\r\n",
        );
        assert_eq!(holds(&one_way), Some(false));
        let video_only = b"v=0\r\no=- 1 1 IN IP4 h\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\nm=video 51372 RTP/AVP 96\r\na=sendonly\r\n";
        assert_eq!(holds(video_only), Some(true));
    }

    #[test]
    fn real_phone_hold_offers() {
        // Polycom VVX hold re-INVITE (sendonly), Yealink with inactive, LF line ends.
        let polycom = "v=0\no=- 1617902633 1617902634 IN IP4 192.168.1.21\ns=Polycom IP Phone\nc=IN IP4 192.168.1.21\nt=0 0\na=sendonly\nm=audio 2228 RTP/AVP 9 0 8 18 127\na=rtpmap:9 G722/8000\na=rtpmap:127 telephone-event/8000\n";
        assert_eq!(holds(polycom.as_bytes()), Some(true));
        let resume = polycom.replace("a=sendonly", "a=sendrecv");
        assert_eq!(holds(resume.as_bytes()), Some(false));
        let yealink = "v=0\r\no=- 20045 20047 IN IP4 10.0.0.52\r\ns=SDP data\r\nc=IN IP4 10.0.0.52\r\nt=0 0\r\nm=audio 11786 RTP/AVP 0 8 18 9 101\r\na=rtpmap:0 PCMU/8000\r\na=ptime:20\r\na=inactive\r\na=rtpmap:101 telephone-event/8000\r\n";
        assert_eq!(holds(yealink.as_bytes()), Some(true));
    }

    #[test]
    fn not_sdp_says_nothing() {
        assert_eq!(holds(b""), None);
        assert_eq!(holds(b"<xml/>"), None);
        assert_eq!(holds(&[0xff, 0xfe, 0x00]), None);
    }
}
