//! Memory per binding, measured exactly: a counting allocator around the system one tracks the
//! live heap while 10,000 AORs register through the registrar into a real sled store. RSS
//! growth (what the benchmark script also prints) overstates it, because glibc keeps freed
//! memory; this is what a binding really holds. The bound makes it a test: a regression that
//! doubles the per-binding cost fails here.

use busylamp::clock::Clock;
use busylamp::config::Config;
use busylamp::events::EventBus;
use busylamp::registrar::{Identity, Registrar};
use busylamp::sip::parse::{parse_message, Limits};
use busylamp::sip::Message;
use busylamp::storage::{BindingStore, SledStore};
use std::sync::Arc;
use std::time::Duration;

#[path = "common/counting.rs"]
mod counting;

#[global_allocator]
static ALLOC: counting::Counting = counting::Counting;

const N: usize = 10_000;

fn register(i: usize) -> busylamp::sip::Request {
    // What a desk phone sends (the Polycom VVX capture's shape, with its long methods list).
    let text = format!(
        "REGISTER sip:example.test SIP/2.0\r\n\
         Via: SIP/2.0/UDP 192.0.2.{h}:5060;branch=z9hG4bK{i}\r\n\
         From: \"Desk {i}\" <sip:{i}@example.test>;tag=f{i}\r\n\
         To: <sip:{i}@example.test>\r\n\
         Call-ID: c7f6bc72e0778e72f7055172226c{i:06}\r\n\
         CSeq: 2 REGISTER\r\n\
         Contact: <sip:{i}@192.0.2.{h}:5060;transport=udp>;methods=\"INVITE,ACK,BYE,CANCEL,OPTIONS,INFO,MESSAGE,SUBSCRIBE,NOTIFY,PRACK,UPDATE,REFER\"\r\n\
         User-Agent: PolycomVVX-VVX_350-UA/5.9.5.0614\r\n\
         Expires: 3600\r\n\
         Content-Length: 0\r\n\r\n",
        h = i % 250 + 1
    );
    match parse_message(text.as_bytes(), &Limits::default()) {
        Ok(Message::Request(r)) => r,
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_per_binding_is_measured_and_bounded() {
    let dir = std::env::temp_dir().join(format!("busylamp-mem-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let store = Arc::new(SledStore::open(&dir, Duration::from_millis(10)).unwrap());
    let cfg = Config::from_toml("[server]\ndomain = \"example.test\"\n", "t").unwrap();
    let reg = Registrar::new(
        &cfg,
        store.clone() as Arc<dyn BindingStore>,
        EventBus::default(),
        Clock::new(),
    );
    // Requests are made up front: their memory is not the bindings'.
    // They stay alive until after the measurement, so their freeing does not offset it.
    let requests: Arc<Vec<_>> = Arc::new((0..N).map(|i| register(1000 + i)).collect());
    // Warm up allocator-visible one-time costs (sled trees, shard maps) with one binding.
    let warm = register(999_999);
    assert_eq!(
        reg.register(&warm, &Identity::Unchecked, "udp:192.0.2.1:5060", "t")
            .await
            .status,
        200
    );
    let disk0 = store.size_on_disk();
    let before = counting::live();

    let mut set = tokio::task::JoinSet::new();
    for i in 0..N {
        let reg = reg.clone();
        let requests = requests.clone();
        set.spawn(async move {
            let source = format!("udp:192.0.2.{}:5060", i % 250 + 1);
            reg.register(&requests[i], &Identity::Unchecked, &source, "t")
                .await
                .status
        });
    }
    while let Some(status) = set.join_next().await {
        assert_eq!(status.unwrap(), 200);
    }
    // Let the writer finish its last flush and drop finished tasks.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let after = counting::live();
    assert_eq!(reg.binding_count(), N + 1);

    let heap_per_binding = (after - before) as f64 / N as f64;
    let disk_per_binding = store.size_on_disk().saturating_sub(disk0) as f64 / N as f64;
    eprintln!(
        "memory per binding: {heap_per_binding:.0} bytes of live heap (registrar + sled), \
         {disk_per_binding:.0} bytes on disk, over {N} Polycom-style bindings"
    );
    assert!(
        heap_per_binding > 100.0,
        "implausibly small: the measurement is broken"
    );
    assert!(
        heap_per_binding < 3000.0,
        "a binding costs {heap_per_binding:.0} bytes of heap"
    );
    drop(requests);
    drop(reg);
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
}
