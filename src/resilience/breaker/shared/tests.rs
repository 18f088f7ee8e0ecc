//! The shared breaker against real `redis-server` processes. Each `Store` in
//! a test plays one process (its own connections, subscriber and tasks).

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use super::*;
use crate::resilience::WindowType;
use crate::store::testing::RedisServer;
use crate::store::StoreConfig;

fn clock() -> f64 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    BASE.get_or_init(Instant::now).elapsed().as_secs_f64()
}

fn store(server: &RedisServer) -> Arc<Store> {
    let cfg = StoreConfig::new(vec![server.url()], None, "t:", 0.2, 0.5).expect("valid");
    Store::connect(cfg).expect("connects")
}

fn cfg() -> BreakerConfig {
    BreakerConfig {
        failure_threshold: 3,
        recovery_timeout: 0.3,
        success_threshold: 2,
        half_open_max_calls: 2,
        ..BreakerConfig::default()
    }
}

/// Polls `cond` (fails after 10 s: a hang, not a slow machine).
fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn admit(b: &SharedBreaker) -> Result<Permit, Rejection> {
    match b.try_admit(clock()) {
        Admission::Admitted(p) => Ok(p),
        Admission::Rejected(r) => Err(r),
        Admission::NeedsLease => b.acquire_lease_blocking(clock()),
    }
}

fn fail(b: &SharedBreaker) {
    let p = admit(b).expect("admitted");
    b.record(p, clock(), true);
}

fn synced(b: &SharedBreaker) -> bool {
    b.shared.inner.lock().mirror.snap.is_some()
}

/// Two "processes" (a store each) sharing `name`, both synced.
fn pair(server: &RedisServer, name: &str, c: BreakerConfig) -> (SharedBreaker, SharedBreaker) {
    let a = SharedBreaker::new(store(server), name, c.clone(), clock);
    let b = SharedBreaker::new(store(server), name, c, clock);
    wait_for("both synced", || synced(&a) && synced(&b));
    (a, b)
}

#[test]
fn failures_in_two_processes_add_up_and_the_opening_reaches_both() {
    let Some(server) = RedisServer::start(&[]) else {
        return;
    };
    let (a, b) = pair(&server, "svc", cfg());
    fail(&a);
    fail(&b);
    wait_for("two failures counted", || {
        b.metrics(clock()).metrics.consecutive_failures == 2
    });
    assert_eq!(a.state(), State::Closed);
    fail(&a);
    wait_for("both open", || {
        a.state() == State::Open && b.state() == State::Open
    });
    let r = admit(&b).expect_err("rejected");
    assert_eq!(r.state, State::Open);
    assert!(r.retry_after > 0.0);
    let t = b.take_transitions();
    assert_eq!(
        t,
        vec![Transition {
            from: State::Closed,
            to: State::Open
        }]
    );
    assert_eq!(server.cli(&["HGET", "t:cb:{svc}:s", "state"]), "open");
}

#[test]
fn a_process_that_sees_the_threshold_crossed_opens_at_once() {
    let Some(server) = RedisServer::start(&[]) else {
        return;
    };
    let (a, b) = pair(&server, "own", cfg());
    for _ in 0..3 {
        fail(&a);
    }
    // Its own failures cross the threshold: no need to wait for the report.
    assert_eq!(a.state(), State::Open);
    assert!(admit(&a).is_err());
    wait_for("b opens", || b.state() == State::Open);
    wait_for("the report confirms it", || {
        a.shared
            .inner
            .lock()
            .mirror
            .snap
            .as_ref()
            .is_some_and(|s| s.state == State::Open)
    });
}

#[test]
fn half_open_admits_exactly_the_probes_allowed_across_processes() {
    let Some(server) = RedisServer::start(&[]) else {
        return;
    };
    let breakers: Vec<SharedBreaker> = (0..4)
        .map(|_| SharedBreaker::new(store(&server), "probe", cfg(), clock))
        .collect();
    wait_for("synced", || breakers.iter().all(synced));
    for _ in 0..3 {
        fail(&breakers[0]);
    }
    wait_for("all open", || {
        breakers.iter().all(|b| b.state() == State::Open)
    });
    std::thread::sleep(Duration::from_millis(350));
    let results: Vec<Result<Permit, Rejection>> = std::thread::scope(|s| {
        let hs: Vec<_> = breakers
            .iter()
            .flat_map(|b| (0..3).map(move |_| s.spawn(move || admit(b))))
            .collect();
        hs.into_iter()
            .map(|h| h.join().expect("no panic"))
            .collect()
    });
    let probes: Vec<&Permit> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert_eq!(probes.len(), 2, "{results:?}");
    assert!(probes.iter().all(|p| p.probe && p.shared && p.lease > 0));
    // Two successful probes (success_threshold=2), from any process, close it.
    let owners: Vec<usize> = results
        .iter()
        .enumerate()
        .filter(|(_, r)| r.is_ok())
        .map(|(i, _)| i / 3)
        .collect();
    for (p, &i) in probes.iter().zip(&owners) {
        breakers[i].record(**p, clock(), false);
    }
    wait_for("closed everywhere", || {
        breakers.iter().all(|b| b.state() == State::Closed)
    });
}

#[test]
fn a_failed_probe_reopens_with_backoff_for_everyone() {
    let Some(server) = RedisServer::start(&[]) else {
        return;
    };
    let c = BreakerConfig {
        backoff_multiplier: 2.0,
        max_recovery_timeout: Some(1.0),
        ..cfg()
    };
    let (a, b) = pair(&server, "backoff", c);
    for _ in 0..3 {
        fail(&a);
    }
    wait_for("b opens", || b.state() == State::Open);
    std::thread::sleep(Duration::from_millis(350));
    let p = admit(&b).expect("probe");
    assert!(p.probe);
    b.record(p, clock(), true);
    wait_for("a sees the doubled timeout", || {
        let m = a.metrics(clock()).metrics;
        m.state == State::Open && (m.recovery_timeout - 0.6).abs() < 1e-9
    });
}

#[test]
fn a_probe_whose_process_died_does_not_block_recovery() {
    let Some(server) = RedisServer::start(&[]) else {
        return;
    };
    let c = BreakerConfig {
        half_open_max_calls: 1,
        success_threshold: 1,
        ..cfg()
    };
    let (a, b) = pair(&server, "dead", c);
    for _ in 0..3 {
        fail(&a);
    }
    std::thread::sleep(Duration::from_millis(350));
    let lost = admit(&a).expect("a probe");
    assert!(lost.probe);
    drop(a); // its process dies with the lease held
    wait_for("b hears half-open", || b.state() == State::HalfOpen);
    assert!(admit(&b).is_err(), "the lease is still held");
    // The lease expires after the recovery timeout.
    std::thread::sleep(Duration::from_millis(350));
    let p = admit(&b).expect("the expired lease is free again");
    b.record(p, clock(), false);
    wait_for("closed", || b.state() == State::Closed);
}

#[test]
fn manual_states_reach_every_process() {
    let Some(server) = RedisServer::start(&[]) else {
        return;
    };
    let (a, b) = pair(&server, "manual", cfg());
    a.force_open(clock());
    wait_for("b forced open", || b.state() == State::ForcedOpen);
    assert_eq!(admit(&b).expect_err("rejected").state, State::ForcedOpen);
    b.disable(clock());
    wait_for("a disabled", || a.state() == State::Disabled);
    for _ in 0..5 {
        fail(&a);
    }
    a.reset(clock());
    wait_for("b closed", || b.state() == State::Closed);
}

#[test]
fn redis_loss_falls_back_locally_and_converges_when_it_returns() {
    let Some(mut server) = RedisServer::start(&[]) else {
        return;
    };
    let (a, b) = pair(&server, "loss", cfg());
    server.kill();
    wait_for("a falls back", || a.local_fallback_active());
    // Local decisions, no waiting: three failures open a's own breaker.
    let started = Instant::now();
    for _ in 0..3 {
        fail(&a);
    }
    assert!(admit(&a).is_err());
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "never blocks on Redis"
    );
    let m = a.metrics(clock());
    assert!(m.local_fallback_active && m.store_errors > 0 && m.fallbacks > 0);
    assert!(m.last_error.is_some());
    server.restart();
    wait_for("both share again", || {
        !a.local_fallback_active() && !b.local_fallback_active()
    });
    // The restarted server is empty: shared state is closed again.
    assert_eq!(a.state(), State::Closed);
    for _ in 0..3 {
        fail(&b);
    }
    wait_for("a opens from b's failures", || a.state() == State::Open);
}

#[test]
fn a_key_of_the_wrong_type_is_a_reported_error_not_a_panic() {
    let Some(server) = RedisServer::start(&[]) else {
        return;
    };
    server.cli(&["SET", "t:cb:{typed}:s", "not a hash"]);
    let a = SharedBreaker::new(store(&server), "typed", cfg(), clock);
    wait_for("a falls back", || a.local_fallback_active());
    let m = a.metrics(clock());
    assert!(
        m.last_error.as_deref().unwrap_or("").contains("WRONGTYPE"),
        "{m:?}"
    );
    // Decisions continue locally.
    fail(&a);
    assert!(admit(&a).is_ok());
    server.cli(&["DEL", "t:cb:{typed}:s"]);
    wait_for("shared again", || !a.local_fallback_active());
}

#[test]
fn failure_and_slow_rates_count_every_process_in_one_window() {
    let Some(server) = RedisServer::start(&[]) else {
        return;
    };
    for (window_type, name) in [(WindowType::Count, "rate-c"), (WindowType::Time, "rate-t")] {
        let c = BreakerConfig {
            failure_threshold: 1000,
            failure_rate_threshold: Some(0.5),
            window_type,
            window_size: 10,
            minimum_calls: 4,
            ..cfg()
        };
        let (a, b) = pair(&server, name, c);
        for failed in [false, false, true] {
            let p = admit(&a).expect("closed");
            a.record(p, clock(), failed);
        }
        wait_for("a's calls counted", || {
            b.metrics(clock()).metrics.window.calls == 3
        });
        assert_eq!(b.state(), State::Closed);
        let p = admit(&b).expect("closed");
        b.record(p, clock(), true); // 2 of 4 calls failed, across two processes
        wait_for("open everywhere", || {
            a.state() == State::Open && b.state() == State::Open
        });
    }
    let c = BreakerConfig {
        slow_call_duration: Some(0.001),
        slow_call_rate_threshold: Some(1.0),
        window_size: 4,
        minimum_calls: 2,
        ..cfg()
    };
    let (a, b) = pair(&server, "slow", c);
    for x in [&a, &b] {
        let p = admit(x).expect("closed");
        std::thread::sleep(Duration::from_millis(3));
        x.record(p, clock(), false);
    }
    wait_for("two slow calls in two processes open it", || {
        a.state() == State::Open && b.state() == State::Open
    });
}
