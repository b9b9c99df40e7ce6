//! The Prometheus endpoint (`[control] metrics = "127.0.0.1:9464"`; off by default): `GET
//! /metrics` answers the Prometheus text format (0.0.4), encoded by `prometheus-client`, over
//! hyper's HTTP/1 server.
//!
//! Counters are atomics the SIP path bumps (no lock, no allocation: one slot per known method
//! and final status, in a table made once at start); gauges and the flush histogram are read
//! from the services at scrape time, so nothing is updated on the SIP path for them.

use crate::server::Core;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The methods counted by name (RFC 3261 and the extensions phones send); any other is
/// counted as `other`, so a flood of invented methods cannot grow the table.
pub const METHODS: [&str; 15] = [
    "INVITE",
    "ACK",
    "BYE",
    "CANCEL",
    "OPTIONS",
    "REGISTER",
    "SUBSCRIBE",
    "NOTIFY",
    "PUBLISH",
    "INFO",
    "UPDATE",
    "PRACK",
    "REFER",
    "MESSAGE",
    "other",
];

/// Final statuses 200..=699, one slot each.
const FIRST_STATUS: u16 = 200;
const STATUSES: usize = 500;

/// The index of `method` in [`METHODS`] (case-sensitive, as RFC 3261 §7.1 says methods are).
pub fn method_index(method: &str) -> usize {
    match method {
        "INVITE" => 0,
        "ACK" => 1,
        "BYE" => 2,
        "CANCEL" => 3,
        "OPTIONS" => 4,
        "REGISTER" => 5,
        "SUBSCRIBE" => 6,
        "NOTIFY" => 7,
        "PUBLISH" => 8,
        "INFO" => 9,
        "UPDATE" => 10,
        "PRACK" => 11,
        "REFER" => 12,
        "MESSAGE" => 13,
        _ => 14,
    }
}

/// Requests read and answered since start, by method and final status.
pub struct RequestCounters {
    received: [AtomicU64; METHODS.len()],
    /// `METHODS.len() * STATUSES` slots: method-major.
    answered: Box<[AtomicU64]>,
}

impl Default for RequestCounters {
    fn default() -> Self {
        RequestCounters {
            received: Default::default(),
            answered: (0..METHODS.len() * STATUSES)
                .map(|_| AtomicU64::new(0))
                .collect(),
        }
    }
}

impl std::fmt::Debug for RequestCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestCounters").finish_non_exhaustive()
    }
}

impl RequestCounters {
    /// A request was read (retransmissions and ACKs included).
    pub fn received(&self, method: &str) {
        self.received[method_index(method)].fetch_add(1, Ordering::Relaxed);
    }

    /// A final answer to a `method` request left; provisional answers are not counted.
    pub fn answered(&self, method: &str, status: u16) {
        if let Some(slot) = Self::slot(method_index(method), status) {
            self.answered[slot].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Final answers with `status` to `method` requests so far.
    pub fn answered_count(&self, method: &str, status: u16) -> u64 {
        Self::slot(method_index(method), status)
            .map_or(0, |slot| self.answered[slot].load(Ordering::Relaxed))
    }

    pub fn received_count(&self, method: &str) -> u64 {
        self.received[method_index(method)].load(Ordering::Relaxed)
    }

    fn slot(method: usize, status: u16) -> Option<usize> {
        let s = usize::from(status.checked_sub(FIRST_STATUS)?);
        (s < STATUSES).then_some(method * STATUSES + s)
    }

    /// (method, status, count) of every pair answered at least once.
    fn each_answered(&self) -> impl Iterator<Item = (&'static str, u16, u64)> + '_ {
        self.answered.iter().enumerate().filter_map(|(i, n)| {
            let n = n.load(Ordering::Relaxed);
            let status = FIRST_STATUS + u16::try_from(i % STATUSES).ok()?;
            (n > 0).then(|| (METHODS[i / STATUSES], status, n))
        })
    }
}

/// Reads everything at scrape time from the running server.
struct Scrape(Arc<Core>);

impl std::fmt::Debug for Scrape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Scrape")
    }
}

impl Collector for Scrape {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let core = &self.0;
        {
            let mut m = enc.encode_descriptor(
                "busylamp_requests",
                "Requests answered with a final status since start, by method (\"other\": a method not known by name) and status code",
                None,
                MetricType::Counter,
            )?;
            for (method, status, n) in core.requests.each_answered() {
                let labels = ([("method", method)], [("status", status)]);
                m.encode_family(&labels)?
                    .encode_counter::<NoLabelSet, _, u64>(&n, None)?;
            }
        }
        {
            let mut m = enc.encode_descriptor(
                "busylamp_requests_received",
                "Requests read since start, by method (retransmissions and ACKs included)",
                None,
                MetricType::Counter,
            )?;
            for method in METHODS {
                let n = core.requests.received_count(method);
                if n > 0 {
                    m.encode_family(&[("method", method)])?
                        .encode_counter::<NoLabelSet, _, u64>(&n, None)?;
                }
            }
        }
        {
            let t = core.presence.notify_counts().totals();
            let mut m = enc.encode_descriptor(
                "busylamp_notifies",
                "NOTIFYs since start: sent; retried (no 2xx, the subscription stays and the state is sent again); failed (refused for good, the subscription ended)",
                None,
                MetricType::Counter,
            )?;
            for (result, n) in [
                ("sent", t.sent),
                ("retried", t.retried),
                ("failed", t.failed),
            ] {
                m.encode_family(&[("result", result)])?
                    .encode_counter::<NoLabelSet, _, u64>(&n, None)?;
            }
        }
        let counts = core.presence.counts();
        {
            let mut m = enc.encode_descriptor(
                "busylamp_subscriptions",
                "Subscriptions held by the presence server, by event package",
                None,
                MetricType::Gauge,
            )?;
            for (package, subs) in &counts.by_package {
                m.encode_family(&[("package", *package)])?
                    .encode_gauge(subs)?;
            }
        }
        {
            let mut m = enc.encode_descriptor(
                "busylamp_publications",
                "Publications held by the presence server (PUBLISH and in-process publishers), by event package",
                None,
                MetricType::Gauge,
            )?;
            for (package, pubs) in &counts.publications_by_package {
                m.encode_family(&[("package", *package)])?
                    .encode_gauge(pubs)?;
            }
        }
        let gauges = [
            (
                "busylamp_bindings",
                "Registered contacts (bindings) of all AORs",
                core.registrar.binding_count(),
            ),
            (
                "busylamp_calls",
                "Calls the dialog tracker follows (ringing or answered)",
                core.proxy.dialogs().len(),
            ),
            (
                "busylamp_lamps",
                "Presentities with dialog state (a dialog publication): the lamps watchers see",
                counts.lamps,
            ),
        ];
        for (name, help, value) in gauges {
            enc.encode_descriptor(name, help, None, MetricType::Gauge)?
                .encode_gauge(&value)?;
        }
        {
            let f = core.in_flight();
            let mut m = enc.encode_descriptor(
                "busylamp_transactions",
                "SIP transactions in flight: server (requests being answered) and client (our NOTIFYs, forwarded branches, the presence client's requests)",
                None,
                MetricType::Gauge,
            )?;
            for (kind, n) in [
                ("server", f.server_transactions),
                ("client", f.client_transactions),
            ] {
                m.encode_family(&[("kind", kind)])?.encode_gauge(&n)?;
            }
        }
        if let Some(times) = &core.flush_times {
            let s = times.snapshot();
            enc.encode_descriptor(
                "busylamp_storage_flush_seconds",
                "Time of each storage flush (a group commit: the batch applied, then fsync)",
                None,
                MetricType::Histogram,
            )?
            .encode_histogram::<NoLabelSet>(
                s.sum.as_secs_f64(),
                s.count,
                &s.buckets,
                None,
            )?;
        }
        Ok(())
    }
}

/// Longest request head (request line and headers) we read; hyper's least.
const MAX_REQUEST_HEAD: usize = 8 * 1024;
/// Connections open at once; more are closed at once (a scraper needs one).
const MAX_CONNECTIONS: usize = 16;
/// A request head must arrive within this once it has begun (a trickling client is cut).
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection is closed after this, whatever it does (a scraper reconnects; a client that
/// trickles bytes cannot hold a slot).
const CONNECTION_LIFETIME: Duration = Duration::from_secs(30);

/// The metrics text as a scrape returns it.
pub fn render(core: &Arc<Core>) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Scrape(core.clone())));
    encode(&registry)
}

fn encode(registry: &Registry) -> String {
    let mut text = String::new();
    // Writing into a String fails only if an encoder fails, which ours do not.
    if let Err(e) = prometheus_client::encoding::prometheus_text::encode(&mut text, registry) {
        tracing::warn!(error = %e, "cannot encode the metrics");
    }
    text
}

/// Binds `[control] metrics` (before anything else starts, so a taken port stops the start).
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}

/// Serves `GET /metrics` on `listener` for the server's lifetime (abort the task to stop:
/// the connections, in a set the task owns, end with it).
pub async fn serve(listener: tokio::net::TcpListener, core: Arc<Core>) {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Scrape(core)));
    let registry = Arc::new(registry);
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let accepted = listener.accept().await;
        while conns.try_join_next().is_some() {}
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors and kin: wait instead of spinning.
                tracing::debug!(error = %e, "metrics endpoint: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if conns.len() >= MAX_CONNECTIONS {
            continue;
        }
        let registry = registry.clone();
        conns.spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let answer = answer(&req, &registry);
                async move { Ok::<_, std::convert::Infallible>(answer) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .max_buf_size(MAX_REQUEST_HEAD)
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            let _ = tokio::time::timeout(CONNECTION_LIFETIME, conn).await;
        });
    }
}

fn answer<B>(req: &Request<B>, registry: &Registry) -> Response<Full<Bytes>> {
    let plain = |status: StatusCode, text: &'static str| {
        let mut r = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
        *r.status_mut() = status;
        r
    };
    if req.uri().path() != "/metrics" {
        return plain(StatusCode::NOT_FOUND, "busylamp serves /metrics only\n");
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = plain(StatusCode::METHOD_NOT_ALLOWED, "GET /metrics\n");
        r.headers_mut().insert(
            hyper::header::ALLOW,
            "GET, HEAD".parse().expect("a header value"),
        );
        return r;
    }
    let mut r = Response::new(Full::new(Bytes::from(encode(registry))));
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(
            prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
        ),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_and_statuses_have_their_slot_and_others_share_one() {
        let c = RequestCounters::default();
        c.answered("REGISTER", 200);
        c.answered("REGISTER", 200);
        c.answered("SUBSCRIBE", 489);
        c.answered("FOO", 405);
        c.answered("BAR", 405);
        // Provisional and impossible statuses are not counted.
        c.answered("INVITE", 180);
        c.answered("INVITE", 700);
        c.received("ACK");
        assert_eq!(c.answered_count("REGISTER", 200), 2);
        assert_eq!(c.answered_count("SUBSCRIBE", 489), 1);
        assert_eq!(c.answered_count("other", 405), 2);
        assert_eq!(c.received_count("ACK"), 1);
        let mut all: Vec<_> = c.each_answered().collect();
        all.sort();
        assert_eq!(
            all,
            vec![
                ("REGISTER", 200, 2),
                ("SUBSCRIBE", 489, 1),
                ("other", 405, 2)
            ]
        );
        for (i, m) in METHODS.iter().enumerate() {
            assert_eq!(method_index(m), i, "{m}");
        }
    }

    #[test]
    fn the_last_slot_is_699() {
        let c = RequestCounters::default();
        c.answered("other", 699);
        assert_eq!(
            c.each_answered().collect::<Vec<_>>(),
            vec![("other", 699, 1)]
        );
    }
}
