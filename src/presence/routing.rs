//! NOTIFY routing: where a subscription's NOTIFYs go (RFC 3261 §12.2.1.1: the route set's
//! first hop, else the remote target; RFC 3581 behind NAT: the address the SUBSCRIBE came
//! from), worked out once per subscription and refresh. Pure: records in, addresses out.

use crate::sip::Uri;
use crate::storage::{FlowRecord, SubscriptionRecord};
use crate::transport::{Peer, Proto};
use ipnet::IpNet;
use std::net::SocketAddr;
use std::sync::Arc;

pub(super) fn proto_name(p: Proto) -> &'static str {
    match p {
        Proto::Udp => "udp",
        Proto::Tcp => "tcp",
    }
}

pub(super) fn flow_of(peer: &Peer) -> FlowRecord {
    FlowRecord {
        proto: proto_name(peer.proto).into(),
        remote: peer.remote.to_string(),
        local: peer.local.to_string(),
    }
}

/// [`next_hop`] of a stored record (tests).
#[cfg(test)]
pub(super) fn notify_target(rec: &SubscriptionRecord, trusted: &[IpNet]) -> Option<Peer> {
    let target = Uri::parse(&rec.remote_target).ok()?;
    next_hop(rec, trusted, stored_flow(&rec.flow)?, &target)
}

/// The flow a record names, parsed back (after a restart, or for a record read from disk).
fn stored_flow(flow: &FlowRecord) -> Option<Peer> {
    let proto = if flow.proto == "tcp" {
        Proto::Tcp
    } else {
        Proto::Udp
    };
    Some(Peer {
        proto,
        remote: flow.remote.parse().ok()?,
        local: flow.local.parse().ok()?,
        conn: None,
    })
}

/// Where NOTIFYs of a subscription go: the flow the SUBSCRIBE came from, whatever its
/// Record-Route or Contact name, so that nobody can point our NOTIFYs at a third party
/// (amplification, issue 10 finding 4). Two exceptions: the first Route of the dialog when it
/// is a proxy in `trusted` (`[auth] trusted`) or the very address of the flow; else, over UDP,
/// the watcher's Contact port when the Contact is the host the SUBSCRIBE came from (a phone
/// that sends from one port and listens on another).
fn next_hop(rec: &SubscriptionRecord, trusted: &[IpNet], flow: Peer, target: &Uri) -> Option<Peer> {
    let (proto, remote) = (flow.proto, flow.remote);
    let hop = |u: &Uri| -> Option<SocketAddr> {
        let s = u.as_sip()?;
        let ip = s.host.ip()?;
        Some(SocketAddr::new(ip, s.port.unwrap_or(5060)))
    };
    let first_route = rec.route_set.first().and_then(|r| {
        let r = r.trim();
        let inner = r
            .strip_prefix('<')
            .and_then(|x| x.split('>').next())
            .unwrap_or(r);
        hop(&Uri::parse(inner).ok()?)
    });
    let to = match first_route {
        Some(a) if a == remote || crate::config::in_networks(trusted, a.ip()) => a,
        // A route set the watcher chose, through nobody we trust: back over the flow.
        Some(_) => remote,
        None => match hop(target) {
            Some(a) if a.ip() == remote.ip() && proto == Proto::Udp => a,
            _ => remote,
        },
    };
    Some(Peer {
        proto,
        remote: to,
        local: flow.local,
        conn: None,
    })
}

/// Where a subscription's NOTIFYs go: the next hop, the Request-URI (remote target) and our
/// Via `host:port` (from our Contact). Shared (`Arc`) with each NOTIFY decided under the shard
/// lock, which builds its request later: a reference count instead of a copy per NOTIFY.
#[derive(Debug, Clone)]
pub(super) struct NotifyRoute {
    pub(super) to: Peer,
    pub(super) request_uri: Arc<Uri>,
    pub(super) via_sent_by: Arc<str>,
}

pub(super) fn notify_route(rec: &SubscriptionRecord, trusted: &[IpNet]) -> Option<NotifyRoute> {
    let target = Uri::parse(&rec.remote_target).ok()?;
    let flow = stored_flow(&rec.flow)?;
    let via_sent_by = sent_by(&rec.contact).into();
    route_over(rec, trusted, flow, target, via_sent_by)
}

/// [`notify_route`] for a record made from the SUBSCRIBE just received: the flow is the
/// request's own `peer`, the remote target its Contact URI (`rec.remote_target` is that URI
/// printed) and `via_sent_by` our Contact's `host:port`, so nothing is printed to text and
/// parsed back (it was ~8k instructions of a SUBSCRIBE's ~160k).
pub(super) fn notify_route_of(
    rec: &SubscriptionRecord,
    trusted: &[IpNet],
    peer: &Peer,
    target: Uri,
    via_sent_by: Arc<str>,
) -> Option<NotifyRoute> {
    // As stored and parsed back: the text of an IPv6 address has no flow label.
    let remote = match peer.remote {
        SocketAddr::V6(mut a) => {
            a.set_flowinfo(0);
            SocketAddr::V6(a)
        }
        a => a,
    };
    let flow = Peer {
        remote,
        conn: None,
        ..*peer
    };
    route_over(rec, trusted, flow, target, via_sent_by)
}

fn route_over(
    rec: &SubscriptionRecord,
    trusted: &[IpNet],
    flow: Peer,
    target: Uri,
    via_sent_by: Arc<str>,
) -> Option<NotifyRoute> {
    Some(NotifyRoute {
        to: next_hop(rec, trusted, flow, &target)?,
        request_uri: Arc::new(target),
        via_sent_by,
    })
}

/// `host:port` of a SIP URI (our Contact), for the Via of our NOTIFYs.
pub(super) fn sent_by(contact: &str) -> String {
    match Uri::parse(contact) {
        Ok(Uri::Sip(s)) => match s.port {
            Some(p) => format!("{}:{p}", s.host),
            None => s.host.to_string(),
        },
        _ => contact.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::SubState;

    fn rec(remote_target: &str, route_set: &[&str], proto: &str, from: &str) -> SubscriptionRecord {
        SubscriptionRecord {
            presentity: "sip:1001@example.com".into(),
            event: "dialog".into(),
            event_id: None,
            watcher: "sip:1002@example.com".into(),
            watcher_header: "<sip:1002@example.com>".into(),
            presentity_header: "<sip:1001@example.com>".into(),
            call_id: "c".into(),
            local_tag: "l".into(),
            remote_tag: "r".into(),
            remote_target: remote_target.into(),
            route_set: route_set.iter().map(|s| s.to_string()).collect(),
            local_cseq: 0,
            remote_cseq: 1,
            version: 0,
            cseq_reserved: 0,
            version_reserved: 0,
            expires_at: 0,
            state: SubState::Active,
            accept: Vec::new(),
            flow: FlowRecord {
                proto: proto.into(),
                remote: from.into(),
                local: "192.0.2.1:5060".into(),
            },
            user_agent: None,
            contact: "sip:192.0.2.1:5060;transport=tcp".into(),
            created_at: 0,
        }
    }

    /// A new subscription's route is made from the SUBSCRIBE's own flow and parsed Contact;
    /// after a restart it is made from the stored text. Both give the same route.
    #[test]
    fn a_route_from_the_request_is_the_route_from_its_stored_record() {
        let cases = [
            rec("sip:1002@192.0.2.7:5062", &[], "udp", "192.0.2.7:5070"),
            rec("sip:1002@192.0.2.7:5062", &[], "udp", "192.0.2.8:5070"),
            rec("sip:1002@192.0.2.7", &[], "tcp", "192.0.2.7:5070"),
            rec(
                "sip:1002@192.0.2.7:5062",
                &["<sip:192.0.2.50:5070;lr>"],
                "udp",
                "192.0.2.50:5070",
            ),
            rec(
                "sip:1002@[2001:db8::7]:5062",
                &[],
                "udp",
                "[2001:db8::7]:5070",
            ),
        ];
        for r in cases {
            let stored = notify_route(&r, &[]).unwrap();
            let mut peer = stored_flow(&r.flow).unwrap();
            if let SocketAddr::V6(a) = &mut peer.remote {
                a.set_flowinfo(7); // what a datagram's source may carry; the text has none
            }
            let target = Uri::parse(&r.remote_target).unwrap();
            let fresh =
                notify_route_of(&r, &[], &peer, target, sent_by(&r.contact).into()).unwrap();
            assert_eq!(fresh.to, stored.to, "{}", r.remote_target);
            assert_eq!(fresh.request_uri, stored.request_uri);
            assert_eq!(fresh.via_sent_by, stored.via_sent_by);
        }
    }

    #[test]
    fn rfc3261_12_2_1_1_the_route_sets_first_hop_comes_first() {
        let r = rec(
            "sip:1002@192.0.2.7:5062",
            &["<sip:192.0.2.50:5070;lr>", "<sip:192.0.2.51;lr>"],
            "udp",
            "192.0.2.50:5070",
        );
        let route = notify_route(&r, &[]).unwrap();
        assert_eq!(route.to.remote, "192.0.2.50:5070".parse().unwrap());
        assert_eq!(route.request_uri.to_string(), "sip:1002@192.0.2.7:5062");
        assert_eq!(&*route.via_sent_by, "192.0.2.1:5060");
    }

    #[test]
    fn rfc3261_12_2_1_1_the_remote_target_when_it_is_where_the_subscribe_came_from() {
        let r = rec("sip:1002@192.0.2.7:5062", &[], "udp", "192.0.2.7:5999");
        assert_eq!(
            notify_target(&r, &[]).unwrap().remote,
            "192.0.2.7:5062".parse().unwrap()
        );
    }

    #[test]
    fn rfc3581_behind_nat_or_over_tcp_the_address_the_subscribe_came_from() {
        // A private Contact: the NOTIFY goes where the SUBSCRIBE came from.
        let r = rec("sip:1002@10.0.0.7:5062", &[], "udp", "198.51.100.9:40000");
        assert_eq!(
            notify_target(&r, &[]).unwrap().remote,
            "198.51.100.9:40000".parse().unwrap()
        );
        // TCP: back over the subscriber's connection's address.
        let r = rec("sip:1002@192.0.2.7:5062", &[], "tcp", "192.0.2.7:41000");
        let to = notify_target(&r, &[]).unwrap();
        assert_eq!(
            (to.proto, to.remote),
            (Proto::Tcp, "192.0.2.7:41000".parse().unwrap())
        );
    }

    #[test]
    fn rfc3261_12_2_1_1_a_route_set_the_watcher_chose_is_not_followed_to_a_third_party() {
        // Record-Route names a victim; the SUBSCRIBE came from elsewhere: back to the flow.
        let r = rec(
            "sip:1002@192.0.2.7:5062",
            &["<sip:203.0.113.66:5060;lr>"],
            "udp",
            "192.0.2.7:5999",
        );
        let route = notify_route(&r, &[]).unwrap();
        assert_eq!(route.to.remote, "192.0.2.7:5999".parse().unwrap());
        assert_eq!(route.request_uri.to_string(), "sip:1002@192.0.2.7:5062");
        // Not even another port of the flow's own host.
        let r = rec(
            "sip:1002@192.0.2.7:5062",
            &["<sip:192.0.2.7:5070;lr>"],
            "udp",
            "192.0.2.7:5999",
        );
        assert_eq!(
            notify_target(&r, &[]).unwrap().remote,
            "192.0.2.7:5999".parse().unwrap()
        );
        // Over TCP likewise: the connection it came over.
        let r = rec(
            "sip:1002@192.0.2.7:5062",
            &["<sip:203.0.113.66;lr>"],
            "tcp",
            "192.0.2.7:41000",
        );
        let to = notify_target(&r, &[]).unwrap();
        assert_eq!(
            (to.proto, to.remote),
            (Proto::Tcp, "192.0.2.7:41000".parse().unwrap())
        );
    }

    #[test]
    fn rfc3261_12_2_1_1_a_trusted_proxy_as_first_hop_is_followed() {
        let trusted: Vec<IpNet> = vec!["192.0.2.50/32".parse().unwrap()];
        let r = rec(
            "sip:1002@192.0.2.7:5062",
            &["<sip:192.0.2.50:5070;lr>"],
            "udp",
            "192.0.2.7:5999",
        );
        assert_eq!(
            notify_target(&r, &trusted).unwrap().remote,
            "192.0.2.50:5070".parse().unwrap()
        );
        // Another proxy than the trusted one: the flow.
        let r = rec(
            "sip:1002@192.0.2.7:5062",
            &["<sip:192.0.2.51:5070;lr>"],
            "udp",
            "192.0.2.7:5999",
        );
        assert_eq!(
            notify_target(&r, &trusted).unwrap().remote,
            "192.0.2.7:5999".parse().unwrap()
        );
    }

    #[test]
    fn a_flow_that_does_not_parse_has_no_route() {
        let r = rec("sip:1002@192.0.2.7", &[], "udp", "not an address");
        assert!(notify_route(&r, &[]).is_none());
    }
}
