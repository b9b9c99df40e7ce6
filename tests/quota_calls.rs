//! `[proxy] max_calls_per_user`: one authenticated user cannot hold every line. Its calls
//! count while they ring or are answered; at the limit its next INVITE gets 403 naming the
//! key, while another user's call still goes through; a call that ends frees its place.

mod common;

use busylamp::sip::HasHeaders;
use common::phone::Phone;

const CONFIG: &str = r#"
[server]
domain = "example.test"
listen = ["udp:127.0.0.1:0", "tcp:127.0.0.1:0"]
data_dir = "/nonexistent-unused-by-memory-store"
[proxy]
max_calls_per_user = 3
[[users]]
name = "1001"
password = "secret"
[[users]]
name = "1002"
password = "other"
[[users]]
name = "1003"
password = "third"
"#;

#[tokio::test]
async fn a_user_at_max_calls_per_user_is_refused_while_another_user_still_calls() {
    let s = common::server(CONFIG).await;
    let mut bob = Phone::new(s.udp, "1002", "desk").await;
    bob.register_with_password("other").await;
    let mut alice = Phone::new(s.udp, "1001", "a").await;
    let core = &s.handle.core;

    // Three calls ringing at Bob.
    let mut ringing = Vec::new();
    for i in 0..3 {
        let invite = alice.invite("1002", &format!("q-{i}")).await;
        let sent = alice.authenticate(&invite, "secret").await;
        let at = bob.next_of("INVITE").await;
        bob.reply(&at, 180, &format!("b{i}")).await;
        ringing.push((sent, at));
    }
    assert_eq!(core.calls_originated_by("1001"), 3);

    // The fourth: refused, and Bob's phone hears nothing of it.
    let mark = s.mark();
    let invite = alice.invite("1002", "q-3").await;
    alice.authenticate(&invite, "secret").await;
    let r = alice.final_of("INVITE").await;
    assert_eq!(
        (r.status, r.reason.as_str()),
        (
            403,
            "Too many calls for this user (proxy.max_calls_per_user)"
        )
    );
    s.assert_processed_then_silent(
        mark,
        2,
        async { bob.ua.next_request_within(300).await.is_none() },
        "the call over the limit reached the phone",
    )
    .await;

    // Another user is still served.
    let mut carol = Phone::new(s.udp, "1003", "c").await;
    let invite = carol.invite("1002", "carol-1").await;
    carol.authenticate(&invite, "third").await;
    let at = bob.next_of("INVITE").await;
    assert_eq!(at.call_id().unwrap(), "carol-1");
    bob.reply(&at, 486, "bc").await;
    assert_eq!(carol.final_of("INVITE").await.status, 486);
    assert_eq!(core.calls_originated_by("1003"), 0, "a refused call ended");

    // One of Alice's calls ends (Bob declines it): her next call goes through.
    let (_, at) = &ringing[0];
    bob.reply(at, 603, "b0").await;
    assert_eq!(alice.final_of("INVITE").await.status, 603);
    assert_eq!(core.calls_originated_by("1001"), 2);
    let invite = alice.invite("1002", "q-4").await;
    alice.authenticate(&invite, "secret").await;
    let at = bob.next_of("INVITE").await;
    assert_eq!(at.call_id().unwrap(), "q-4");
    assert_eq!(core.calls_originated_by("1001"), 3);
}

/// An answered call counts until its BYE.
#[tokio::test]
async fn an_answered_call_counts_until_it_is_hung_up() {
    let s = common::server(CONFIG).await;
    let mut bob = Phone::new(s.udp, "1002", "desk").await;
    bob.register_with_password("other").await;
    let mut alice = Phone::new(s.udp, "1001", "a").await;
    let invite = alice.invite("1002", "ans-1").await;
    let sent = alice.authenticate(&invite, "secret").await;
    let at = bob.next_of("INVITE").await;
    bob.reply(&at, 200, "b").await;
    let ok = alice.final_of("INVITE").await;
    assert_eq!(ok.status, 200);
    let mut leg = alice.ack(&mut bob, &sent, &ok).await;
    assert_eq!(s.handle.core.calls_originated_by("1001"), 1);
    alice.hang_up(&mut bob, &mut leg, "b").await;
    assert_eq!(s.handle.core.calls_originated_by("1001"), 0);
}
