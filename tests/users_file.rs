//! The user file (`busylamp users add|remove`) under a running server: read by a watcher task,
//! never on the receive path, so a phone added by the admin registers without a restart.

mod common;

use busylamp::config::Config;
use busylamp::sip::digest::{self, Algorithm};
use busylamp::storage::users::RECHECK;
use busylamp::storage::{MemoryStore, UserFile, UserRecord};
use common::*;
use std::sync::Arc;

#[tokio::test(start_paused = true)]
async fn a_user_added_to_the_file_registers_after_the_reload_without_a_restart() {
    let dir = std::env::temp_dir().join(format!("busylamp-users-file-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = Config::from_toml(BASE_CONFIG, "t.toml").unwrap();
    let server =
        server_with_users(cfg, Arc::new(MemoryStore::new()), Some(UserFile::new(&dir))).await;
    let phone = Udp::new(server.udp).await;

    // 2001 is nobody yet: a correct digest for it is refused.
    let r = register_authed(&phone, "2001", "pw2001", "users-file-1", 1, "").await;
    assert_eq!(r.status, 403, "{}", r.reason);

    // What `busylamp users add 2001` writes.
    let ha1 = |alg| Some(digest::ha1(alg, "2001", "example.test", "pw2001"));
    UserFile::new(&dir)
        .add(UserRecord {
            name: "2001".into(),
            realm: "example.test".into(),
            ha1_md5: ha1(Algorithm::Md5),
            ha1_sha256: ha1(Algorithm::Sha256),
        })
        .unwrap();
    // The watcher looks once per RECHECK (paused clock: no real waiting).
    tokio::time::sleep(2 * RECHECK).await;
    let r = register_authed(&phone, "2001", "pw2001", "users-file-2", 1, "").await;
    assert_eq!(r.status, 200, "{}", r.reason);
    // Users from the config are unaffected.
    let r = register_authed(&phone, "1001", "secret", "users-file-3", 1, "").await;
    assert_eq!(r.status, 200, "{}", r.reason);
    server.handle.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}
