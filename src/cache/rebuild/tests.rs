//! Graph builds off the lock: the switch of an auto partition under
//! concurrent inserts, removals and lookups, compaction, and cancellation.
#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicBool, Ordering};

use crate::cache::index::{IndexKind, AUTO_HNSW_MIN};
use crate::cache::store::Found;
use crate::cache::{Cache, CacheConfig, NewItem, Query};

const DIM: usize = 16;

fn config(index: IndexKind) -> CacheConfig {
    CacheConfig {
        dim: DIM,
        threshold: 0.999,
        ttl: None,
        max_entries: 1_000_000,
        max_memory_mb: 1024.0,
        guard: false,
        index,
        ..CacheConfig::default()
    }
}

/// A unit vector of its own for each `i` (a hash spread over the dims).
fn vector(i: usize) -> Vec<f32> {
    let mut x = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let v: Vec<f32> = (0..DIM)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 11) as f32 / (1u64 << 53) as f32 - 0.5
        })
        .collect();
    config(IndexKind::Flat).normalized(v, "v").unwrap()
}

fn item(i: usize) -> NewItem {
    NewItem {
        prompt: format!("prompt {i}"),
        partition: "p".into(),
        response: i.to_string().into_bytes(),
        metadata: None,
        tags: Vec::new(),
        ttl: f64::INFINITY,
        vector: vector(i),
        learning: Default::default(),
    }
}

/// The semantic answer to entry `i`'s vector (a prompt no entry has).
fn nearest(c: &Cache, i: usize) -> Option<Found> {
    let q = Query {
        prompt: format!("query {i}"),
        partition: "p".into(),
        vector: Some(vector(i)),
    };
    let phase = c.lookup_exact(vec![q], 0.0);
    c.lookup_semantic(phase, Vec::new()).pop().flatten()
}

fn found_id(f: &Option<Found>) -> Option<usize> {
    f.as_ref()
        .map(|f| std::str::from_utf8(&f.response).unwrap().parse().unwrap())
}

fn wait_for_builds(c: &Cache) {
    while c.stats().index_builds > 0 {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

/// Once the builds are done: the partition is on one graph, which holds
/// every entry of `0..n` but the `gone` ones, each found by its own vector.
fn assert_on_a_graph_without(c: &Cache, n: usize, gone: impl Fn(usize) -> bool) {
    wait_for_builds(c);
    let st = c.stats();
    assert_eq!((st.flat_indexes, st.hnsw_indexes), (0, 1));
    assert_eq!(c.len(), (0..n).filter(|&i| !gone(i)).count());
    for i in 0..n {
        let got = found_id(&nearest(c, i));
        if gone(i) {
            assert_ne!(got, Some(i), "entry {i} was removed, yet returned");
        } else {
            assert_eq!(got, Some(i), "entry {i} lost");
        }
    }
}

#[test]
fn an_auto_partition_switches_without_losing_concurrent_changes() {
    let c = Cache::new(config(IndexKind::Auto), "e").unwrap();
    let n = 3 * AUTO_HNSW_MIN;
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        // Lookups meanwhile always find a live entry by its own vector.
        s.spawn(|| {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let got = found_id(&nearest(&c, i % 500));
                assert!(got.is_none() || got == Some(i % 500) || i % 500 % 3 == 0);
                i += 7;
            }
        });
        // Inserts one by one, through the switch, and every third entry
        // removed again, some while the graph is being built.
        for i in 0..n {
            c.insert(vec![item(i)], 0.0).unwrap();
            if i % 3 == 0 && i > 0 {
                assert!(c.invalidate(&format!("prompt {}", i - 3), "p"));
            }
        }
        stop.store(true, Ordering::Relaxed);
    });
    assert_on_a_graph_without(&c, n, |i| i.is_multiple_of(3) && i + 3 < n);
}

#[test]
fn a_bulk_insert_returns_with_the_graph_built() {
    let c = Cache::new(config(IndexKind::Auto), "e").unwrap();
    let n = 5 * AUTO_HNSW_MIN;
    c.insert((0..n).map(item).collect(), 0.0).unwrap();
    let st = c.stats();
    assert_eq!(
        (st.flat_indexes, st.hnsw_indexes, st.index_builds),
        (0, 1, 0)
    );
    let hits = (0..n)
        .step_by(11)
        .filter(|&i| found_id(&nearest(&c, i)) == Some(i))
        .count();
    assert_eq!(hits, n.div_ceil(11));
}

#[test]
fn a_load_answers_exactly_while_its_graph_builds() {
    let c = Cache::new(
        CacheConfig {
            max_memory_mb: 16.0,
            ..config(IndexKind::Auto)
        },
        "e",
    )
    .unwrap();
    let n = 6 * AUTO_HNSW_MIN;
    let mut items: Vec<NewItem> = (0..n).map(item).collect();
    // Refused one by one, not the batch: a wrong dimension, and an entry
    // larger than the memory bound.
    items[10].vector = vec![1.0; DIM + 1];
    items[20].response = vec![b'x'; 17 << 20];
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        // Lookups during the load and the build: an entry is either not
        // loaded yet or found by its own vector, never another.
        s.spawn(|| {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let k = i % n;
                let got = found_id(&nearest(&c, k));
                assert!(got.is_none() || got == Some(k), "{k} answered by {got:?}");
                i += 13;
            }
        });
        assert_eq!(c.load(items, 0.0), n - 2);
        // Returned with every entry answerable, whether or not the graph
        // is built yet; removals during the build reach the graph.
        for i in (0..n).step_by(7).filter(|&i| i != 10 && i != 20) {
            assert_eq!(found_id(&nearest(&c, i)), Some(i));
            assert!(c.invalidate(&format!("prompt {i}"), "p"));
        }
        stop.store(true, Ordering::Relaxed);
    });
    assert_on_a_graph_without(&c, n, |i| i.is_multiple_of(7) || i == 10 || i == 20);
}

#[test]
fn a_build_finishes_only_once_the_bulk_load_ends() {
    let c = Cache::new(config(IndexKind::Auto), "e").unwrap();
    let n = 4 * AUTO_HNSW_MIN;
    let bulk = c.bulk();
    for chunk in (0..n).collect::<Vec<_>>().chunks(AUTO_HNSW_MIN) {
        assert_eq!(
            c.load(chunk.iter().map(|&i| item(i)).collect(), 0.0),
            chunk.len()
        );
        // Between the pages of a load, the partition stays on its scan.
        let st = c.stats();
        assert_eq!((st.flat_indexes, st.hnsw_indexes), (1, 0));
    }
    drop(bulk);
    wait_for_builds(&c);
    let st = c.stats();
    assert_eq!((st.flat_indexes, st.hnsw_indexes), (0, 1));
    let hits = (0..n)
        .step_by(5)
        .filter(|&i| found_id(&nearest(&c, i)) == Some(i))
        .count();
    assert_eq!(hits, n.div_ceil(5));
}

#[test]
fn a_mostly_dead_graph_is_compacted_and_keeps_its_entries() {
    let c = Cache::new(config(IndexKind::Hnsw), "e").unwrap();
    let n = 4000;
    c.insert((0..n).map(item).collect(), 0.0).unwrap();
    let full = c.stats();
    // Mass removal: nine entries in ten.
    for i in (0..n).filter(|i| i % 10 != 0) {
        assert!(c.invalidate(&format!("prompt {i}"), "p"));
    }
    wait_for_builds(&c);
    let st = c.stats();
    assert_eq!(st.entries, n / 10);
    assert_eq!(st.hnsw_indexes, 1);
    // The slots of removed entries are given back, and memory_bytes, which
    // counts them while they are held, falls with the entries. A compaction
    // may start while removals go on (the builder runs beside them), and a
    // graph compacts only once its slots pass twice its entries, so up to
    // as many dead slots as live ones may remain: 400, about a tenth of the
    // full graph's bytes; without compaction, 3,600.
    assert!(
        st.index_slack_bytes < full.memory_bytes / 8,
        "{} {} {}",
        st.index_slack_bytes,
        st.memory_bytes,
        full.memory_bytes
    );
    assert!(
        st.memory_bytes < full.memory_bytes / 5,
        "{} {} {}",
        st.index_slack_bytes,
        st.memory_bytes,
        full.memory_bytes
    );
    for i in 0..n {
        let got = found_id(&nearest(&c, i));
        assert_eq!(got == Some(i), i % 10 == 0, "entry {i}");
    }
}

#[test]
fn a_build_is_cancelled_when_its_partition_shrinks_or_goes() {
    let c = Cache::new(config(IndexKind::Auto), "e").unwrap();
    for round in 0..3 {
        for i in 0..AUTO_HNSW_MIN + 10 {
            c.insert(vec![item(i)], 0.0).unwrap();
        }
        if round == 0 {
            c.clear();
        } else {
            assert_eq!(c.invalidate_partition("p"), AUTO_HNSW_MIN + 10);
        }
        wait_for_builds(&c);
        assert_eq!(c.len(), 0);
        assert_eq!(c.memory_bytes(), 0);
    }
}
