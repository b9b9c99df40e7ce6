//! The appearance table survives `kill -9` (issue 12 §5): the real binary, three phones of
//! line 2000 (A on appearance 0, B on 1, C watching), SIGKILL, start again on the same data
//! directory. Every phone gets a new `dialog;sla` SUBSCRIBE and answers it with its full
//! state, as a Polycom does; B hung up while the server was down and answers with an empty
//! document. Afterwards every watcher sees the same line as before, with B's appearance
//! free. Loopback only, every wait bounded.

mod common;
use busylamp::sip::body::dialog_info::DialogState::Confirmed;
use common::binary::Busylamp;
use common::bla::*;

const EXTRA: &str = r#"
[presence]
coalesce_ms = 0
[[bla.lines]]
aor = "2000"
appearances = 2
members = ["1001", "1002"]
[[users]]
name = "2000"
password = "line-pw"
[[users]]
name = "1001"
password = "pw1001"
[[users]]
name = "1002"
password = "pw1002"
"#;

async fn member(server: std::net::SocketAddr, name: &str, user: &str, pw: &str) -> BlaPhone {
    let mut p = BlaPhone::new(server, "2000", name, user, pw).await;
    p.registered().await;
    p.accept_sla_subscribe().await;
    assert_eq!(p.watch_line().await, 200, "phone {name} watches the line");
    p
}

/// Seizes `k` and reports the call answered.
async fn in_call(p: &mut BlaPhone, k: u32) -> String {
    let (status, id) = p.seize(k).await;
    assert_eq!(status, 200, "{}", p.last_reason);
    let status = p
        .update(&id, |c| {
            c.state = Confirmed;
            c.remote = Some("sip:1005@example.test".into());
            c.remote_tag = Some(format!("far-{k}"));
        })
        .await;
    assert_eq!(status, 200, "{}", p.last_reason);
    id
}

#[tokio::test]
async fn appearances_survive_kill_9_and_a_phone_that_hung_up_meanwhile_frees_its_own() {
    let mut server = Busylamp::new("bla", EXTRA);
    server.wait_ready().await;
    let mut a = member(server.addr, "A", "2000", "line-pw").await;
    let mut b = member(server.addr, "B", "1001", "pw1001").await;
    let mut c = member(server.addr, "C", "1002", "pw1002").await;
    in_call(&mut a, 0).await;
    in_call(&mut b, 1).await;
    a.sees("B on 1", |v| holds(v, 1, "B", Confirmed, false))
        .await;
    b.sees("A on 0", |v| holds(v, 0, "A", Confirmed, false))
        .await;
    c.sees("both in use", |v| {
        holds(v, 0, "A", Confirmed, false) && holds(v, 1, "B", Confirmed, false)
    })
    .await;
    // What the server sent before the kill (a refresh with the normal Expires once the
    // seizes became calls) is answered before it: an answer to the dead server's dialog after
    // the restart would be a 481, rightly.
    pump_all(&mut [&mut a, &mut b, &mut c], 500).await;
    let subscribed = [a.subscribes.len(), b.subscribes.len(), c.subscribes.len()];

    server.kill9();
    // B's call ended while the server was down: its next full state is empty.
    b.mine.clear();
    server.start();
    server.wait_ready().await;

    // Every phone is SUBSCRIBEd anew and answers with its full state.
    let mut phones = [&mut a, &mut b, &mut c];
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(40);
    while phones
        .iter()
        .zip(subscribed)
        .any(|(p, n)| p.subscribes.len() <= n)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "not every phone was re-subscribed within 40 s: {:?} new SUBSCRIBEs\n{}",
            phones
                .iter()
                .zip(subscribed)
                .map(|(p, n)| p.subscribes.len() - n)
                .collect::<Vec<_>>(),
            server.log_text()
        );
        for p in phones.iter_mut() {
            p.pump_for(20).await;
        }
    }
    for (p, n) in phones.iter().zip(subscribed) {
        assert!(
            p.subscribe_answers[n..].iter().all(|s| *s == 200),
            "phone {}: our first NOTIFY in each new subscription after the restart: {:?}\n{}\n{}",
            p.name(),
            p.subscribe_answers,
            p.log.join("\n"),
            server.log_text()
        );
    }

    // The watchers see the line as it is: A still on 0, B's 1 free.
    c.sees_within("A on 0, 1 free", 40_000, |v| {
        holds(v, 0, "A", Confirmed, false) && free(v, 1)
    })
    .await;
    b.sees_within("A on 0", 40_000, |v| {
        holds(v, 0, "A", Confirmed, false) && free(v, 1)
    })
    .await;
    a.sees_within("1 free", 40_000, |v| free(v, 1) && free(v, 0))
        .await;
    // And the table works: B seizes 1 again, C seizing 0 is refused.
    let (status, _) = b.seize(1).await;
    assert_eq!(status, 200, "{}", b.last_reason);
    let (status, _) = c.seize(0).await;
    assert_eq!(status, 409, "{}", c.last_reason);
}
