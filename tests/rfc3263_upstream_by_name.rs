//! RFC 3263: `[proxy] upstream` given as a host name is looked up through the resolver
//! (hickory, on the system's configuration: here `localhost` from the hosts file, nothing
//! leaves the machine) and calls for unknown numbers reach the PBX there. The SRV choice and
//! the re-resolution on TTL and on failure are tested purely in `proxy::upstream`.

mod common;
use common::phone::Phone;

fn config(pbx_port: u16) -> String {
    format!(
        r#"
[server]
domain = "example.test"
listen = ["udp:127.0.0.1:0", "tcp:127.0.0.1:0"]
data_dir = "/nonexistent-unused-by-memory-store"
[auth]
trusted = ["127.0.0.1", "127.0.0.2"]
trusted_for = ["calls", "register"]
[proxy]
upstream = "sip:localhost:{pbx_port}"
upstream_refresh = 30
"#
    )
}

#[tokio::test]
async fn rfc3263_an_upstream_host_name_is_resolved_and_calls_reach_the_pbx() {
    let mut pbx = Phone::new_at("127.0.0.1", "127.0.0.1:9".parse().unwrap(), "pbx", "pbx").await;
    let s = common::server(&config(pbx.ua.port())).await;
    pbx.ua.server = s.udp;
    let mut bob = Phone::new_at("127.0.0.2", s.udp, "1002", "desk").await;
    bob.register().await;
    bob.invite("5551234", "by-name").await;
    let at_pbx = pbx.ua.next_request().await;
    assert_eq!(at_pbx.method, "INVITE");
    pbx.reply(&at_pbx, 486, "p").await;
    assert_eq!(bob.final_for("by-name").await.status, 486);
}
