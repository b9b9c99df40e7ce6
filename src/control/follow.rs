//! `follow`: a stream for dashboards. First a `snapshot` notification (the full state, from
//! [`Methods::snapshot`]), then one `change` notification per event of the bus, each with the
//! next sequence number (`seq`, one more per line sent). A client that falls behind (the bus
//! dropped events for it, or its queue is full) gets `{"method":"resync"}` and a fresh
//! snapshot as soon as its queue has room again; what it missed meanwhile is dropped, never
//! buffered.

use super::rpc;
use super::Methods;
use crate::events::{Event, RegistrationChange, SubscriptionChange};
use serde_json::{json, Value};
use std::sync::Arc;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{broadcast, mpsc};

/// Runs a stream until the client's queue closes (it went away) or the bus closes.
pub(super) async fn run(
    methods: Arc<dyn Methods>,
    mut bus: broadcast::Receiver<Event>,
    tx: mpsc::Sender<String>,
) {
    let mut seq: u64 = 0;
    let mut lagging = match tx.try_send(snapshot_line(seq, methods.snapshot())) {
        Ok(()) => false,
        Err(mpsc::error::TrySendError::Full(_)) => true,
        Err(mpsc::error::TrySendError::Closed(_)) => return,
    };
    loop {
        if lagging {
            // Events are read (and dropped: the next snapshot holds them) while waiting for
            // room, so the bus never counts this reader as lagging meanwhile.
            tokio::select! {
                permit = tx.reserve() => {
                    let Ok(permit) = permit else { return };
                    if !skip_backlog(&mut bus) {
                        return;
                    }
                    seq += 1;
                    let mut lines = rpc::notification_line("resync", None);
                    lines.push_str(&snapshot_line(seq, methods.snapshot()));
                    permit.send(lines);
                    lagging = false;
                }
                event = bus.recv() => {
                    if let Err(RecvError::Closed) = event {
                        return;
                    }
                }
            }
            continue;
        }
        match bus.recv().await {
            Ok(event) => match tx.try_send(change_line(seq + 1, &event)) {
                Ok(()) => seq += 1,
                Err(mpsc::error::TrySendError::Full(_)) => lagging = true,
                Err(mpsc::error::TrySendError::Closed(_)) => return,
            },
            Err(RecvError::Lagged(_)) => lagging = true,
            Err(RecvError::Closed) => return,
        }
    }
}

/// Drops the events already waiting for this reader: the snapshot taken next holds them.
/// Bounded, since publishers go on meanwhile. `false` when the bus is closed.
fn skip_backlog(bus: &mut broadcast::Receiver<Event>) -> bool {
    use tokio::sync::broadcast::error::TryRecvError;
    for _ in 0..MAX_SKIPPED {
        match bus.try_recv() {
            Ok(_) | Err(TryRecvError::Lagged(_)) => {}
            Err(TryRecvError::Empty) => return true,
            Err(TryRecvError::Closed) => return false,
        }
    }
    true
}

/// Most events [`skip_backlog`] drops in one go (the bus holds 4096 per reader).
const MAX_SKIPPED: usize = 10_000;

/// The `snapshot` notification: `seq` and the members of `state` (an object; anything else
/// is given as `state`).
pub fn snapshot_line(seq: u64, state: Value) -> String {
    let params = match state {
        Value::Object(mut o) => {
            o.insert("seq".into(), json!(seq));
            Value::Object(o)
        }
        other => json!({ "seq": seq, "state": other }),
    };
    rpc::notification_line("snapshot", Some(params))
}

/// The `change` notification of one event.
pub fn change_line(seq: u64, event: &Event) -> String {
    let mut params = change(event);
    params["seq"] = json!(seq);
    rpc::notification_line("change", Some(params))
}

/// An event as the `change` notice's params (without `seq`): `kind` and its fields.
pub fn change(event: &Event) -> Value {
    match event {
        Event::Registration {
            change,
            aor,
            contact,
            user_agent,
            expires,
            flow,
        } => json!({
            "kind": "registration",
            "change": match change {
                RegistrationChange::Registered => "registered",
                RegistrationChange::Refreshed => "refreshed",
                RegistrationChange::Unregistered => "unregistered",
                RegistrationChange::Expired => "expired",
            },
            "aor": aor,
            "contact": contact,
            "user_agent": user_agent,
            "expires": expires,
            "flow": flow,
        }),
        Event::Subscription {
            change,
            presentity,
            event,
            watcher,
            state,
        } => {
            let (name, reason) = match change {
                SubscriptionChange::Created => ("created", None),
                SubscriptionChange::Refreshed => ("refreshed", None),
                SubscriptionChange::Activated => ("activated", None),
                SubscriptionChange::Terminated(r) => ("terminated", Some(*r)),
            };
            json!({
                "kind": "subscription",
                "change": name,
                "reason": reason,
                "presentity": presentity,
                "event": event,
                "watcher": watcher,
                "state": state,
            })
        }
        Event::Call {
            call_id,
            caller,
            callee,
            state,
            held,
            since,
        } => json!({
            "kind": "call",
            "call_id": call_id,
            "caller": caller,
            "callee": callee,
            "state": state,
            "held": held,
            "since": since,
        }),
        Event::Appearance {
            line,
            appearance,
            state,
            phone,
            peer,
        } => json!({
            "kind": "appearance",
            "peer": peer,
            "line": line,
            "appearance": appearance,
            "state": state,
            "phone": phone,
        }),
        Event::NotifyFailed {
            presentity,
            event,
            watcher,
            status,
            gave_up,
        } => json!({
            "kind": "notify_failed",
            "presentity": presentity,
            "event": event,
            "watcher": watcher,
            "status": status,
            "gave_up": gave_up,
        }),
        Event::Publication {
            presentity,
            event,
            source,
            waiting,
        } => {
            let mut v = json!({
                "kind": "publication",
                "presentity": presentity,
                "event": event,
                "source": source,
            });
            if let Some(w) = waiting {
                v["waiting"] = json!(w);
            }
            v
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::rpc::RpcError;
    use crate::control::Answer;
    use crate::events::EventBus;

    struct Fake;
    impl Methods for Fake {
        fn call(&self, _: &str, _: Value) -> Answer {
            Box::pin(async { Err(RpcError::new(rpc::METHOD_NOT_FOUND, "fake")) })
        }
        fn snapshot(&self) -> Value {
            json!({ "status": { "api": 1 } })
        }
    }

    fn parse(line: &str) -> Value {
        serde_json::from_str(line).unwrap()
    }

    fn appearance(i: u32) -> Event {
        Event::Appearance {
            line: "sip:2000@example.test".into(),
            appearance: i,
            state: "seized",
            phone: Some("sip:1001@example.test".into()),
            peer: None,
        }
    }

    #[test]
    fn every_event_kind_is_named_with_its_fields() {
        let events = [
            Event::Registration {
                change: RegistrationChange::Expired,
                aor: "sip:1001@example.test".into(),
                contact: "sip:1001@192.0.2.1".into(),
                user_agent: None,
                expires: 1_800_000_000,
                flow: "tcp:192.0.2.1:5061".into(),
            },
            Event::Subscription {
                change: SubscriptionChange::Terminated("timeout"),
                presentity: "sip:1002@example.test".into(),
                event: "dialog",
                watcher: "sip:1001@example.test".into(),
                state: "active",
            },
            Event::Call {
                call_id: "c1".into(),
                caller: "sip:1001@example.test".into(),
                callee: "sip:1002@example.test".into(),
                state: "confirmed",
                held: true,
                since: 1_700_000_000,
            },
            appearance(1),
            Event::Publication {
                presentity: "sip:1001@example.test".into(),
                event: "presence",
                source: None,
                waiting: None,
            },
        ];
        let kinds: Vec<Value> = events.iter().map(|e| change(e)["kind"].clone()).collect();
        assert_eq!(
            kinds,
            vec![
                json!("registration"),
                json!("subscription"),
                json!("call"),
                json!("appearance"),
                json!("publication")
            ]
        );
        assert_eq!(change(&events[0])["change"], "expired");
        // The snapshot's contact field names: `expires` (unix seconds), `flow`.
        assert_eq!(change(&events[0])["expires"], 1_800_000_000);
        assert_eq!(change(&events[0])["flow"], "tcp:192.0.2.1:5061");
        assert_eq!(change(&events[1])["reason"], "timeout");
        assert_eq!(change(&events[1])["state"], "active");
        assert_eq!(change(&events[3])["appearance"], 1);
        let l = change_line(5, &events[2]);
        assert_eq!(l.matches('\n').count(), 1);
        let v = parse(&l);
        assert_eq!(v["method"], "change");
        assert_eq!(v["params"]["seq"], 5);
        assert_eq!(v["params"]["call_id"], "c1");
        assert_eq!(v["params"]["held"], true);
        assert_eq!(v["params"]["since"], 1_700_000_000);
    }

    #[test]
    fn a_snapshot_carries_its_seq_beside_the_state() {
        let v = parse(&snapshot_line(3, json!({"status": {"api": 1}})));
        assert_eq!(v["method"], "snapshot");
        assert_eq!(v["params"]["seq"], 3);
        assert_eq!(v["params"]["status"]["api"], 1);
        let v = parse(&snapshot_line(0, json!([1])));
        assert_eq!(v["params"]["state"], json!([1]));
    }

    #[tokio::test]
    async fn snapshot_then_changes_in_sequence() {
        let bus = EventBus::new(16);
        let (tx, mut rx) = mpsc::channel(16);
        let task = tokio::spawn(run(Arc::new(Fake), bus.subscribe(), tx));
        let first = parse(&rx.recv().await.unwrap());
        assert_eq!(first["method"], "snapshot");
        assert_eq!(first["params"]["seq"], 0);
        for i in 1..=3 {
            bus.publish(appearance(i));
            let v = parse(&rx.recv().await.unwrap());
            assert_eq!(v["params"]["seq"], u64::from(i));
            assert_eq!(v["params"]["appearance"], i);
        }
        drop(rx);
        bus.publish(appearance(9));
        task.await.unwrap();
    }

    #[tokio::test]
    async fn a_lagging_reader_gets_resync_and_a_fresh_snapshot_never_a_backlog() {
        // The bus drops events for it (Lagged).
        let bus = EventBus::new(4);
        let (tx, mut rx) = mpsc::channel(64);
        let _task = tokio::spawn(run(Arc::new(Fake), bus.subscribe(), tx));
        assert_eq!(parse(&rx.recv().await.unwrap())["method"], "snapshot");
        for i in 0..100 {
            bus.publish(appearance(i));
        }
        let lines = rx.recv().await.unwrap();
        let mut it = lines.lines();
        assert_eq!(parse(it.next().unwrap())["method"], "resync");
        let snap = parse(it.next().unwrap());
        assert_eq!(snap["method"], "snapshot");
        assert_eq!(snap["params"]["seq"], 1);
        bus.publish(appearance(7));
        let v = parse(&rx.recv().await.unwrap());
        assert_eq!(
            (v["method"].as_str(), v["params"]["seq"].as_u64()),
            (Some("change"), Some(2))
        );

        // Its queue is full: the changes are dropped, and once there is room again it is
        // told to resync.
        let bus = EventBus::new(1024);
        let (tx, mut rx) = mpsc::channel(2);
        let _task = tokio::spawn(run(Arc::new(Fake), bus.subscribe(), tx));
        tokio::task::yield_now().await;
        for i in 0..50 {
            bus.publish(appearance(i));
            tokio::task::yield_now().await;
        }
        let got: Vec<Value> = [rx.recv().await.unwrap(), rx.recv().await.unwrap()]
            .iter()
            .map(|l| parse(l))
            .collect();
        assert_eq!(got[0]["method"], "snapshot");
        assert_eq!(got[1]["params"]["seq"], 1);
        let lines = rx.recv().await.unwrap();
        assert!(
            lines.starts_with("{\"jsonrpc\":\"2.0\",\"method\":\"resync\"}\n"),
            "{lines}"
        );
        assert_eq!(parse(lines.lines().nth(1).unwrap())["params"]["seq"], 2);
    }
}
