//! The Redis limiter protocol against a real `redis-server`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::*;
use crate::resilience::Gcra;
use crate::store::testing::RedisServer;
use crate::store::{Store, StoreConfig};

fn store(server: &RedisServer) -> Arc<Store> {
    let cfg = StoreConfig::new(vec![server.url()], None, "t:", 1.0, 1.0).expect("config");
    Store::connect(cfg).expect("connects")
}

fn single(rate: f64, per: f64, burst: Option<u64>) -> Vec<Limit> {
    vec![Limit::new("", rate, per, burst).expect("valid")]
}

#[test]
fn keys_carry_prefix_name_and_the_user_key_as_hash_tag() {
    let Some(server) = RedisServer::start(&[]) else {
        return;
    };
    let s = store(&server);
    let g = RedisGcra::new(single(10.0, 1.0, None), None).expect("ok");
    assert_eq!(g.name(), "10/1/10");
    assert_eq!(g.key(&s, "user:1"), "t:rl:10/1/10:{user:1}");
    let named = RedisGcra::new(single(10.0, 1.0, None), Some("api")).expect("ok");
    assert_eq!(named.key(&s, ""), "t:rl:api:{}");
    assert!(RedisGcra::new(single(1.0, 1.0, None), Some("my api")).is_err());
    assert!(RedisGcra::new(single(1.0, 1.0, None), Some("a{b}")).is_err());
    let multi = vec![
        Limit::new("tokens", 1000.0, 60.0, None).expect("ok"),
        Limit::new("requests", 3.0, 60.0, None).expect("ok"),
    ];
    let m = RedisGcra::new(multi, None).expect("ok");
    assert_eq!(m.name(), "requests=3/60/3,tokens=1000/60/1000");
}

#[test]
fn burst_refill_and_all_or_nothing_in_server_time() {
    let Some(server) = RedisServer::start(&[]) else {
        return;
    };
    let s = store(&server);
    // One unit per hour: nothing refills during the test.
    let g = RedisGcra::new(single(1.0, 3600.0, Some(3)), Some("slow")).expect("ok");
    for _ in 0..3 {
        assert_eq!(g.try_acquire(&s, "k", &[1]), Ok(Decision::Allowed));
    }
    match g.try_acquire(&s, "k", &[1]) {
        Ok(Decision::Denied { retry_after }) => {
            assert!(retry_after > 3500.0 && retry_after <= 3600.0)
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(g.available(&s, "k"), Ok(vec![0]));
    assert_eq!(g.available(&s, "other"), Ok(vec![3]));
    let ra = g.retry_after(&s, "k", &[1]).expect("peek");
    assert!(ra > 3500.0, "{ra}");
    assert_eq!(g.available(&s, "k"), Ok(vec![0]), "peeking charges nothing");
    let ttl: i64 = server.cli(&["PTTL", "t:rl:slow:{k}"]).parse().expect("int");
    assert!(ttl > 3 * 3_500_000 && ttl <= 3 * 3_600_000 + 1, "{ttl}");
    assert_eq!(g.reset(&s, "k"), Ok(true));
    assert_eq!(g.reset(&s, "k"), Ok(false));
    assert_eq!(g.available(&s, "k"), Ok(vec![3]));

    let m = RedisGcra::new(
        vec![
            Limit::new("requests", 3.0, 3600.0, None).expect("ok"),
            Limit::new("tokens", 1000.0, 3600.0, None).expect("ok"),
        ],
        Some("m"),
    )
    .expect("ok");
    assert_eq!(m.try_acquire(&s, "k", &[1, 900]), Ok(Decision::Allowed));
    assert!(!m.try_acquire(&s, "k", &[1, 200]).expect("reply").allowed());
    assert_eq!(m.available(&s, "k"), Ok(vec![2, 100]), "nothing charged");
    assert_eq!(m.try_acquire(&s, "k", &[1, 100]), Ok(Decision::Allowed));
    assert_eq!(server.cli(&["HLEN", "t:rl:m:{k}"]), "2");
    assert_eq!(m.stored_keys(&s), Ok(1));
    assert_eq!(g.try_acquire(&s, "x", &[1]), Ok(Decision::Allowed));
    m.clear(&s).expect("clear");
    assert_eq!(m.stored_keys(&s), Ok(0));
    assert_eq!(g.stored_keys(&s), Ok(1), "another limiter's keys are kept");
}

#[test]
fn idle_keys_expire() {
    let Some(server) = RedisServer::start(&[]) else {
        return;
    };
    let s = store(&server);
    let g = RedisGcra::new(single(1000.0, 1.0, Some(5)), Some("fast")).expect("ok");
    assert_eq!(g.try_acquire(&s, "k", &[5]), Ok(Decision::Allowed));
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.cli(&["EXISTS", "t:rl:fast:{k}"]) == "1" {
        assert!(Instant::now() < deadline, "the key never expired");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(g.available(&s, "k"), Ok(vec![5]));
}

#[test]
fn values_of_the_wrong_type_are_typed_errors() {
    let Some(server) = RedisServer::start(&[]) else {
        return;
    };
    let s = store(&server);
    let g = RedisGcra::new(single(1.0, 1.0, None), Some("w")).expect("ok");
    server.cli(&["SET", "t:rl:w:{str}", "hello"]);
    let err = g.try_acquire(&s, "str", &[1]).expect_err("wrong type");
    assert!(
        matches!(err, StoreError::Reply(_)) && err.to_string().contains("WRONGTYPE"),
        "{err}"
    );
    server.cli(&["HSET", "t:rl:w:{bad}", "tat", "not-a-number"]);
    let err = g.try_acquire(&s, "bad", &[1]).expect_err("bad value");
    let msg = err.to_string();
    assert!(
        msg.contains("t:rl:w:{bad}") && msg.contains("not-a-number"),
        "{msg}"
    );
    assert!(!err.falls_back());
    assert!(s.is_connected());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Fed the same times, the script and the in-process GCRA decide alike
    /// (the same decisions, the same waits), for one limit and for two.
    #[test]
    fn same_decisions_as_the_in_process_limiter(
        rate in 1u32..50,
        burst in 1u64..20,
        tokens in 10u32..500,
        steps in proptest::collection::vec((0u32..1500, 0u64..20, 0u64..60), 1..60),
    ) {
        let Some(server) = RedisServer::start(&[]) else { return Ok(()) };
        let s = store(&server);
        let limits = vec![
            Limit::new("requests", f64::from(rate), 1.0, Some(burst)).expect("ok"),
            Limit::new("tokens", f64::from(tokens), 1.0, None).expect("ok"),
        ];
        let remote = RedisGcra::new(limits.clone(), Some("p")).expect("ok");
        let mut local = Gcra::new(limits, 10).expect("ok");
        // Server-like absolute times (µs since the epoch) and the same instants
        // relative to the start for the in-process limiter.
        let epoch_us = 1.7e15_f64;
        let mut now_ms = 0u64;
        for (dt, req, tok) in steps {
            now_ms += u64::from(dt);
            let costs = [req.min(burst), tok.min(u64::from(tokens))];
            let want = local.try_acquire("k", &costs, now_ms as f64 / 1000.0);
            let got = remote
                .try_acquire_at(&s, "k", &costs, epoch_us + now_ms as f64 * 1000.0)
                .expect("reply");
            match (want, got) {
                (Decision::Allowed, Decision::Allowed) => {}
                (Decision::Denied { retry_after: a }, Decision::Denied { retry_after: b }) => {
                    prop_assert!((a - b).abs() < 1e-5, "waits {a} vs {b}");
                }
                _ => prop_assert!(false, "at {now_ms} ms costs {costs:?}: local {want:?}, redis {got:?}"),
            }
        }
    }
}
