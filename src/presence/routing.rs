//! NOTIFY routing: where a subscription's NOTIFYs go (RFC 3261 §12.2.1.1: the route set's
//! first hop, else the remote target; RFC 3581 behind NAT: the address the SUBSCRIBE came
//! from), worked out once per subscription and refresh. Pure: records in, addresses out.

use crate::sip::Uri;
use crate::storage::{FlowRecord, SubscriptionRecord};
use crate::transport::{Peer, Proto};
use std::net::SocketAddr;

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

/// Where NOTIFYs of a subscription go: the first Route if the dialog has one, else the
/// watcher's Contact when it is the address the SUBSCRIBE came from, else (a phone behind
/// NAT, whose Contact is a private address) the address the SUBSCRIBE came from.
pub(super) fn notify_target(rec: &SubscriptionRecord) -> Option<Peer> {
    let proto = if rec.flow.proto == "tcp" {
        Proto::Tcp
    } else {
        Proto::Udp
    };
    let remote: SocketAddr = rec.flow.remote.parse().ok()?;
    let local: SocketAddr = rec.flow.local.parse().ok()?;
    let hop = |uri: &str| -> Option<SocketAddr> {
        let u = Uri::parse(uri).ok()?;
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
        hop(inner)
    });
    let to = match first_route {
        Some(a) => a,
        None => match hop(&rec.remote_target) {
            Some(a) if a.ip() == remote.ip() && proto == Proto::Udp => a,
            _ => remote,
        },
    };
    Some(Peer {
        proto,
        remote: to,
        local,
        conn: None,
    })
}

/// Where a subscription's NOTIFYs go: the next hop, the Request-URI (remote target) and our
/// Via `host:port` (from our Contact).
#[derive(Debug, Clone)]
pub(super) struct NotifyRoute {
    pub(super) to: Peer,
    pub(super) request_uri: Uri,
    pub(super) via_sent_by: String,
}

pub(super) fn notify_route(rec: &SubscriptionRecord) -> Option<NotifyRoute> {
    Some(NotifyRoute {
        to: notify_target(rec)?,
        request_uri: Uri::parse(&rec.remote_target).ok()?,
        via_sent_by: sent_by(&rec.contact),
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
