//! The store against real `redis-server` processes.

use std::time::{Duration, Instant};

use redis::Value;

use super::testing::RedisServer;
use super::*;

fn config(url: &str) -> StoreConfig {
    StoreConfig::new(vec![url.to_owned()], None, "t:", 0.5, 1.0).expect("valid config")
}

/// Polls `cond` until it holds (fails after 10 s: a hang, not a slow machine).
fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn connects_pings_and_reports_health() {
    let Some(server) = RedisServer::start(&[]) else {
        return;
    };
    let store = Store::connect(config(&server.url())).expect("connects");
    assert!(store.is_connected());
    assert!(store.ping_blocking().is_ok());
    assert_eq!(store.key("rl:x"), "t:rl:x");
    let h = store.health();
    assert!(h.connected && !h.cluster);
    assert!(h.rtt_p50_ms.is_some() && h.rtt_p99_ms >= h.rtt_p50_ms);
    assert_eq!(h.counters.errors, 0);
    assert!(h.counters.calls >= 1);
    store.close();
    assert_eq!(store.ping_blocking(), Err(StoreError::Closed));
    assert!(StoreError::Closed.falls_back());
    assert!(!store.health().connected);
}

#[test]
fn wrong_or_missing_password_fails_at_construction() {
    let Some(server) = RedisServer::start(&["--requirepass", "s3cret"]) else {
        return;
    };
    let port = server.port;
    for url in [
        format!("redis://:wrong@127.0.0.1:{port}"),
        format!("redis://127.0.0.1:{port}"),
        format!("redis://nobody:s3cret@127.0.0.1:{port}"),
    ] {
        let err = Store::connect(config(&url)).err().expect("refused");
        assert!(matches!(err, StoreError::Auth(_)), "{url}: {err:?}");
        let msg = err.to_string();
        assert!(
            !msg.contains("wrong") || !url.contains("wrong"),
            "password leaked: {msg}"
        );
    }
    let store = Store::connect(config(&format!("redis://:s3cret@127.0.0.1:{port}/0"))).expect("ok");
    assert!(store.ping_blocking().is_ok());
    assert!(store.health().url.contains("***"));
    assert!(!store.health().url.contains("s3cret"));
}

#[test]
fn acl_user_and_unix_socket() {
    let sock = std::env::temp_dir().join(format!("llmedge-test-{}.sock", std::process::id()));
    let sock_s = sock.to_str().expect("utf-8").to_owned();
    let Some(server) = RedisServer::start(&["--unixsocket", &sock_s, "--unixsocketperm", "700"])
    else {
        return;
    };
    server.cli(&["ACL", "SETUSER", "app", "on", ">pw", "~*", "&*", "+@all"]);
    let tcp = Store::connect(config(&format!(
        "redis://app:pw@127.0.0.1:{}/0",
        server.port
    )))
    .expect("ACL user");
    assert!(tcp.ping_blocking().is_ok());
    let unix = Store::connect(config(&format!("unix://{sock_s}?db=2&user=app&pass=pw")))
        .expect("unix socket");
    unix.query_blocking(redis::cmd("SET").arg("t:u").arg("1"))
        .expect("set");
    assert_eq!(server.cli(&["-n", "2", "GET", "t:u"]), "1");
    assert!(unix.health().url.contains("pass=***"));
    let err = Store::connect(config(&format!("unix://{sock_s}?user=app&pass=nope"))).err();
    assert!(matches!(err, Some(StoreError::Auth(_))), "{err:?}");
}

#[test]
fn unreachable_at_start_then_connects_in_the_background() {
    let Some(mut server) = RedisServer::start(&[]) else {
        return;
    };
    server.kill();
    let store = Store::connect(config(&server.url())).expect("no failure while down");
    assert!(!store.is_connected());
    let err = store.ping_blocking().expect_err("down");
    assert!(err.falls_back(), "{err:?}");
    assert!(store.health().last_error.is_some());
    server.restart();
    wait_for("the background connect", || store.ping_blocking().is_ok());
    assert!(store.health().connected);
    assert_eq!(store.counters().reconnects, 1);
}

#[test]
fn the_heartbeat_notices_a_lost_server_without_traffic() {
    let Some(mut server) = RedisServer::start(&[]) else {
        return;
    };
    let cfg = config(&server.url())
        .with_health_interval(0.05)
        .expect("valid");
    let store = Store::connect(cfg).expect("connects");
    let calls = store.counters().calls;
    server.kill();
    // No call is made: only the heartbeat can notice.
    wait_for("the heartbeat to notice", || !store.health().connected);
    assert!(store.health().last_error.is_some());
    server.restart();
    wait_for("the reconnect", || store.health().connected);
    assert_eq!(store.counters().calls, calls, "heartbeats are not calls");
    assert_eq!(store.counters().reconnects, 1);
    assert!(store.ping_blocking().is_ok());
}

const ECHO: &str = "return {KEYS[1], ARGV[1], redis.call('INCR', KEYS[1])}";

#[test]
fn scripts_reload_after_flush_and_restart() {
    let Some(mut server) = RedisServer::start(&[]) else {
        return;
    };
    let store = Store::connect(config(&server.url())).expect("connects");
    let script = Script::new(ECHO);
    let key = store.key("n");
    let run = || store.eval_blocking(&script, &[key.as_str()], &["a"]);
    let expect = |n: i64| {
        Value::Array(vec![
            Value::BulkString(b"t:n".to_vec()),
            Value::BulkString(b"a".to_vec()),
            Value::Int(n),
        ])
    };
    assert_eq!(run(), Ok(expect(1)));
    assert_eq!(store.health().scripts_loaded, 1);
    server.cli(&["SCRIPT", "FLUSH"]);
    assert_eq!(run(), Ok(expect(2)));
    assert_eq!(server.cli(&["SCRIPT", "EXISTS", script.sha()]), "1");
    server.restart();
    // The first call after the crash sees the dropped connection...
    let first = run();
    if let Err(e) = &first {
        assert!(e.falls_back(), "{e:?}");
    }
    // ...and the store reconnects and reloads the script on its own.
    wait_for("the reconnect", || run().is_ok());
    assert!(store.counters().reconnects >= 1);
    assert_eq!(store.health().scripts_loaded, 1);
}

#[test]
fn a_reply_error_is_not_a_fallback() {
    let Some(server) = RedisServer::start(&[]) else {
        return;
    };
    let store = Store::connect(config(&server.url())).expect("connects");
    server.cli(&["LPUSH", "t:list", "x"]);
    let err = store
        .query_blocking(redis::cmd("INCR").arg("t:list"))
        .expect_err("wrong type");
    assert!(matches!(err, StoreError::Reply(_)), "{err:?}");
    assert!(err.to_string().contains("WRONGTYPE"), "{err}");
    assert!(!err.falls_back());
    assert!(store.is_connected());
}

#[test]
fn no_call_waits_beyond_the_timeout() {
    let Some(server) = RedisServer::start(&[]) else {
        return;
    };
    let cfg = StoreConfig::new(vec![server.url()], None, "t:", 0.05, 1.0).expect("valid");
    let store = Store::connect(cfg).expect("connects");
    let port = server.port;
    let sleeper = std::thread::spawn(move || {
        std::process::Command::new("redis-cli")
            .args(["-p", &port.to_string(), "DEBUG", "SLEEP", "0.5"])
            .output()
    });
    wait_for("DEBUG SLEEP to start", || {
        matches!(store.ping_blocking(), Err(StoreError::Timeout(_)))
    });
    assert!(store.counters().timeouts >= 1);
    let _ = sleeper.join();
    wait_for("the server to answer again", || {
        store.ping_blocking().is_ok()
    });
}

#[test]
fn pubsub_delivers_and_resubscribes_after_a_restart() {
    let Some(mut server) = RedisServer::start(&[]) else {
        return;
    };
    let store = Store::connect(config(&server.url())).expect("connects");
    let channel = store.key("events");
    let mut rx = store.subscribe(&channel);
    let next = |rx: &mut tokio::sync::broadcast::Receiver<Push>| {
        store.block_on(async {
            tokio::time::timeout(Duration::from_secs(10), rx.recv())
                .await
                .expect("a push within 10 s")
                .expect("open channel")
        })
    };
    assert_eq!(next(&mut rx), Push::Subscribed);
    assert_eq!(store.block_on(store.publish(&channel, b"hello")), Ok(1));
    assert_eq!(next(&mut rx), Push::Message(Arc::from(&b"hello"[..])));
    server.restart();
    assert_eq!(next(&mut rx), Push::Subscribed);
    wait_for("publishing again", || {
        store.block_on(store.publish(&channel, b"again")) == Ok(1)
    });
    assert_eq!(next(&mut rx), Push::Message(Arc::from(&b"again"[..])));
}
