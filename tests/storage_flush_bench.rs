//! Write latency of the two disk stores, side by side (ignored: a measurement, not a check;
//! `cargo test --release --test storage_flush_bench -- --ignored --nocapture`).
//!
//! What the soak's calls write most: a NOTIFY's CSeq/version (12-byte value) for each of W
//! watchers of a callee, plus the callee's dialog-info publication, one group commit per
//! lamp change. Rounds alternate between sled and redb (a busy machine slows both alike);
//! per backend: write-to-durable latency p50/p99/max over all commits, and the bytes the
//! process wrote to disk per commit (/proc/self/io write_bytes).

use busylamp::storage::{durable, PresenceStore, PresenceWrite, RedbStore, SledStore};
use std::time::{Duration, Instant};

const ROUNDS: usize = 5;
const COMMITS: usize = 300;
const WATCHERS: usize = 10;

fn write_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/io")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| {
                    l.strip_prefix("write_bytes: ")
                        .map(|v| v.trim().parse().ok())
                })
                .flatten()
        })
        .unwrap_or(0)
}

async fn round(store: &dyn PresenceStore, lat: &mut Vec<Duration>) -> u64 {
    let before = write_bytes();
    for i in 0..COMMITS {
        let callee = i % 100;
        let mut writes: Vec<PresenceWrite> = (0..WATCHERS)
            .map(|w| PresenceWrite::NotifySeq {
                key: format!("sub-{callee}-{w}").into_bytes(),
                value: vec![i as u8; 12],
            })
            .collect();
        writes.push(PresenceWrite::PutPublication {
            key: format!("pub-{callee}").into_bytes(),
            value: vec![7u8; 300],
        });
        let started = Instant::now();
        durable(store.write(writes)).await.unwrap();
        lat.push(started.elapsed());
    }
    write_bytes().saturating_sub(before)
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn sled_and_redb_write_latency_and_bytes_written_per_commit() {
    let base = std::env::temp_dir().join(format!("busylamp-flush-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let sled = SledStore::open(&base.join("sled"), Duration::ZERO).unwrap();
    let redb = RedbStore::open(&base.join("redb"), Duration::ZERO).unwrap();
    let (mut sled_lat, mut redb_lat) = (Vec::new(), Vec::new());
    let (mut sled_bytes, mut redb_bytes) = (0, 0);
    for _ in 0..ROUNDS {
        sled_bytes += round(&sled, &mut sled_lat).await;
        redb_bytes += round(&redb, &mut redb_lat).await;
    }
    let n = (ROUNDS * COMMITS) as f64;
    for (name, lat, bytes, disk) in [
        ("sled", &mut sled_lat, sled_bytes, sled.size_on_disk()),
        ("redb", &mut redb_lat, redb_bytes, redb.size_on_disk()),
    ] {
        lat.sort();
        println!(
            "{name}: {} commits of {} records: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; {:.0} bytes written per commit; {:.2} MB on disk at the end",
            lat.len(),
            WATCHERS + 1,
            pct(lat, 0.5),
            pct(lat, 0.99),
            pct(lat, 1.0),
            bytes as f64 / n,
            disk as f64 / 1e6,
        );
    }
    drop(sled);
    drop(redb);
    let _ = std::fs::remove_dir_all(&base);
}
