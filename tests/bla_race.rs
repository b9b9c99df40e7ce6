//! Two phones of a shared line seize the same free appearance at the same moment, 1,000
//! times: both NOTIFYs leave back to back before either answer is read, and every time
//! exactly one gets `200` and the other `409` (issue 12: "two phones seizing the same
//! appearance at the same moment → exactly one 200"). The winner goes back on-hook between
//! rounds. Over UDP (one receive task: the NOTIFYs are handled one after the other) and over
//! TCP on a multi-threaded runtime (one task per connection: the two really race for the
//! line's lock). Bounded: 1,000 rounds each, within 120 s.

mod common;
use common::bla::*;
use common::*;
use std::time::Duration;

/// Line 2000 with two appearances, its own user and member 1001.
const CONFIG: &str = LINE_2000_TWO_USERS;

const ROUNDS: usize = 1_000;

/// Registers both phones and lets the server subscribe to each.
async fn ready(a: &mut BlaPhone, b: &mut BlaPhone) {
    for p in [&mut *a, &mut *b] {
        p.registered().await;
        p.accept_sla_subscribe().await;
    }
}

/// `ROUNDS` simultaneous seizes of appearance 0; the number each phone won.
async fn race(a: &mut BlaPhone, b: &mut BlaPhone) -> (usize, usize) {
    let mut wins = (0, 0);
    for round in 0..ROUNDS {
        // Alternate who sends first, so on UDP either may win.
        let (first, second) = if round % 2 == 0 {
            (&mut *a, &mut *b)
        } else {
            (&mut *b, &mut *a)
        };
        let (id1, c1) = first.seize_send(0).await;
        let (id2, c2) = second.seize_send(0).await;
        let s1 = first.seize_answered(&id1, c1).await;
        let s2 = second.seize_answered(&id2, c2).await;
        let mut statuses = [s1, s2];
        statuses.sort();
        assert_eq!(
            statuses,
            [200, 409],
            "round {round}: exactly one seize wins ({} said {:?})",
            second.name(),
            second.last_reason
        );
        let (winner, id) = if s1 == 200 {
            (first, id1)
        } else {
            (second, id2)
        };
        if winner.name() == "A" {
            wins.0 += 1;
        } else {
            wins.1 += 1;
        }
        assert_eq!(winner.end(&id).await, 200, "round {round}: on-hook");
        // Whatever the server sent meanwhile (a shorter refresh while seized) is answered.
        if round % 20 == 0 {
            a.pump_for(1).await;
            b.pump_for(1).await;
        }
    }
    wins
}

#[tokio::test]
async fn udp_two_phones_seize_the_same_appearance_1000_times_exactly_one_wins() {
    let s = server(CONFIG).await;
    let mut a = BlaPhone::new(s.udp, "2000", "A", "2000", "line-pw").await;
    let mut b = BlaPhone::new(s.udp, "2000", "B", "1001", "pw1001").await;
    ready(&mut a, &mut b).await;
    let (wa, wb) = tokio::time::timeout(Duration::from_secs(120), race(&mut a, &mut b))
        .await
        .expect("1,000 rounds within 120 s");
    assert_eq!(wa + wb, ROUNDS);
    // The line is free at the end: a seize by either wins.
    let (status, _) = b.seize(0).await;
    assert_eq!(status, 200, "{}", b.last_reason);
    eprintln!("udp: A won {wa}, B won {wb}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_two_phones_seize_the_same_appearance_1000_times_exactly_one_wins() {
    let s = server(CONFIG).await;
    let mut a = BlaPhone::new_tcp(s.tcp, "2000", "A", "2000", "line-pw").await;
    let mut b = BlaPhone::new_tcp(s.tcp, "2000", "B", "1001", "pw1001").await;
    ready(&mut a, &mut b).await;
    let (wa, wb) = tokio::time::timeout(Duration::from_secs(120), race(&mut a, &mut b))
        .await
        .expect("1,000 rounds within 120 s");
    assert_eq!(wa + wb, ROUNDS);
    eprintln!("tcp: A won {wa}, B won {wb}");
}
