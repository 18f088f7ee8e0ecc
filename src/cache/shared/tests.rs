//! A shared cache against a real `redis-server` (skipped when it is not
//! installed, except under CI).

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;
use crate::cache::CacheConfig;
use crate::store::testing::RedisServer;
use crate::store::StoreConfig;

fn store(server: &RedisServer) -> Arc<Store> {
    let cfg = StoreConfig::new(vec![server.url()], None, "t:", 0.5, 1.0).unwrap();
    Store::connect(cfg).unwrap()
}

fn cache(identity: &str, dim: usize) -> Arc<Cache> {
    let cfg = CacheConfig {
        dim,
        threshold: 0.9,
        ..CacheConfig::default()
    };
    Arc::new(Cache::new(cfg, identity).unwrap())
}

fn replica(server: &RedisServer, cache: &Arc<Cache>) -> Result<Replica, JoinError> {
    let cfg = SharedConfig {
        namespace: "ns".into(),
        max_shared_entries: 0,
        stream_max_len: 1000,
        max_pending: 100,
        background_load: false,
    };
    let start = Instant::now();
    Replica::start(
        Arc::clone(cache),
        store(server),
        cfg,
        Box::new(move || start.elapsed().as_secs_f64()),
    )
}

fn item(prompt: &str, v: [f32; 2]) -> NewItem {
    NewItem {
        prompt: prompt.into(),
        partition: "p".into(),
        response: prompt.as_bytes().to_vec(),
        metadata: None,
        tags: vec!["t".into()],
        ttl: 60.0,
        vector: v.to_vec(),
        learning: Default::default(),
    }
}

fn eventually(what: &str, f: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "{what} did not happen");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn has(c: &Cache, prompt: &str) -> bool {
    let q = crate::cache::Query {
        prompt: prompt.into(),
        partition: "p".into(),
        vector: None,
    };
    c.lookup_exact(vec![q], 0.0).into_found()[0].is_some()
}

#[test]
fn a_set_in_one_replica_reaches_another_and_so_does_invalidation() {
    let Some(server) = RedisServer::start(&[]) else {
        return;
    };
    let (ca, cb) = (cache("e", 2), cache("e", 2));
    let a = replica(&server, &ca).unwrap();
    let b = replica(&server, &cb).unwrap();
    let items = vec![item("one", [1.0, 0.0])];
    ca.insert(vec![item("one", [1.0, 0.0])], 0.0).unwrap();
    a.publish_set(a.prepare_set(&items));
    eventually("the entry reaching b", || has(&cb, "one"));
    // a third replica starts warm
    let cc = cache("e", 2);
    let _c = replica(&server, &cc).unwrap();
    assert!(has(&cc, "one"));
    cb.invalidate_tag("t");
    b.publish_invalidate_tag("t");
    eventually("the invalidation reaching a", || !has(&ca, "one"));
    assert!(b.flush(Duration::from_secs(5)));
    // a write made before the invalidation was seen is refused
    a.inner.applied.lock().1 = 0;
    a.publish_set(a.prepare_set(&items));
    assert!(a.flush(Duration::from_secs(5)));
    assert_eq!(a.stats().refused, 1);
    let cd = cache("e", 2);
    let _d = replica(&server, &cd).unwrap();
    assert!(!has(&cd, "one"));
    assert!(matches!(
        replica(&server, &cache("other", 2)),
        Err(JoinError::Mismatch(_))
    ));
    assert!(matches!(
        replica(&server, &cache("e", 3)),
        Err(JoinError::Mismatch(_))
    ));
}
