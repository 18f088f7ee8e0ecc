//! The cache's flow: both lookup phases, the guard, the all-or-nothing
//! insert, invalidation, statistics and snapshots.

use super::*;
use crate::cache::index::IndexKind;
use crate::cache::learn::Source;

fn config(threshold: f64, guard: bool) -> CacheConfig {
    CacheConfig {
        dim: 4,
        threshold,
        ttl: Some(100.0),
        max_entries: 100,
        max_memory_mb: 1.0,
        guard,
        index: IndexKind::Flat,
        ..CacheConfig::default()
    }
}

fn cache(threshold: f64, guard: bool) -> Cache {
    Cache::new(config(threshold, guard), "test-embedder").unwrap()
}

fn unit(v: [f32; 4]) -> Vec<f32> {
    config(0.5, false).normalized(v.to_vec(), "v").unwrap()
}

fn item(prompt: &str, partition: &str, v: [f32; 4], tags: &[&str]) -> NewItem {
    NewItem {
        prompt: prompt.into(),
        partition: partition.into(),
        response: [b"S", prompt.as_bytes()].concat(),
        metadata: None,
        tags: tags.iter().map(|t| t.to_string()).collect(),
        ttl: 100.0,
        vector: unit(v),
        learning: Default::default(),
    }
}

fn query(prompt: &str, partition: &str, vector: Option<[f32; 4]>) -> Query {
    Query {
        prompt: prompt.into(),
        partition: partition.into(),
        vector: vector.map(unit),
    }
}

/// Both phases, with the vectors of `to_embed` looked up in `vectors`.
fn lookup(
    c: &Cache,
    queries: Vec<Query>,
    vectors: &[(&str, [f32; 4])],
    now: f64,
) -> Vec<Option<Found>> {
    let phase = c.lookup_exact(queries, now);
    let computed: Vec<Vec<f32>> = phase
        .to_embed()
        .iter()
        .map(|p| {
            let v = vectors.iter().find(|(q, _)| q == p).unwrap().1;
            unit(v)
        })
        .collect();
    c.lookup_semantic(phase, computed)
}

fn response(f: &Option<Found>) -> Option<&str> {
    f.as_ref()
        .map(|f| std::str::from_utf8(&f.response[1..]).unwrap())
}

#[test]
fn the_exact_phase_answers_without_vectors() {
    let c = cache(0.9, true);
    c.insert(
        vec![item("What is Rust?", "", [1.0, 0.0, 0.0, 0.0], &[])],
        0.0,
    )
    .unwrap();
    let phase = c.lookup_exact(
        vec![
            query("  what is RUST? ", "", None),
            query("something else", "", None),
        ],
        1.0,
    );
    assert_eq!(phase.pending(), &[1]);
    assert_eq!(phase.to_embed(), vec!["something else"]);
    let found = phase.into_found();
    assert!(found[0].as_ref().is_some_and(|f| f.exact && f.score == 1.0));
    assert!(found[1].is_none());
    let s = c.stats().counters;
    // The pending lookup is counted only once its semantic phase runs.
    assert_eq!((s.exact_hits, s.misses), (1, 0));
}

#[test]
fn the_semantic_phase_uses_given_and_computed_vectors() {
    let c = cache(0.9, false);
    c.insert(
        vec![
            item("a", "p", [1.0, 0.0, 0.0, 0.0], &[]),
            item("b", "p", [0.0, 1.0, 0.0, 0.0], &[]),
        ],
        0.0,
    )
    .unwrap();
    let phase = c.lookup_exact(
        vec![
            query("near a", "p", Some([1.0, 0.1, 0.0, 0.0])),
            query("near b", "p", None),
            query("near b", "other", None),
            query("far", "p", None),
        ],
        1.0,
    );
    // Only the lookups without a vector need the caller's embedder.
    assert_eq!(phase.to_embed(), vec!["near b", "near b", "far"]);
    let found = c.lookup_semantic(
        phase,
        vec![
            unit([0.1, 1.0, 0.0, 0.0]),
            unit([0.1, 1.0, 0.0, 0.0]),
            unit([0.0, 0.0, 1.0, 0.0]),
        ],
    );
    assert_eq!(response(&found[0]), Some("a"));
    assert_eq!(response(&found[1]), Some("b"));
    assert!(found[1].as_ref().is_some_and(|f| !f.exact && f.score > 0.9));
    assert!(found[2].is_none(), "partitions never share entries");
    assert!(found[3].is_none(), "below the threshold");
    let s = c.stats().counters;
    assert_eq!((s.semantic_hits, s.misses, s.lookups()), (2, 2, 4));
}

#[test]
fn a_threshold_of_one_serves_exact_hits_only() {
    let c = cache(1.0, true);
    c.insert(vec![item("a", "", [1.0, 0.0, 0.0, 0.0], &[])], 0.0)
        .unwrap();
    let phase = c.lookup_exact(vec![query("a", "", None), query("b", "", None)], 1.0);
    assert!(phase.is_done());
    assert!(phase.to_embed().is_empty());
    let found = phase.into_found();
    assert!(found[0].is_some() && found[1].is_none());
    let s = c.stats().counters;
    assert_eq!((s.exact_hits, s.misses), (1, 1));
}

#[test]
fn the_guard_rejects_a_changed_number_and_counts_it() {
    let v = [1.0, 0.0, 0.0, 0.0];
    for guard in [true, false] {
        let c = cache(0.9, guard);
        c.insert(vec![item("fever for 3 days", "", v, &[])], 0.0)
            .unwrap();
        let found = lookup(
            &c,
            vec![query("fever for 4 days", "", None)],
            &[("fever for 4 days", v)],
            1.0,
        );
        let s = c.stats().counters;
        if guard {
            assert!(found[0].is_none());
            assert_eq!(s.guard_rejections.get("numbers"), Some(&1));
            assert_eq!(s.misses, 1);
        } else {
            assert_eq!(response(&found[0]), Some("fever for 3 days"));
            assert_eq!(s.total_rejections(), 0);
        }
    }
}

#[test]
fn the_guard_weighs_a_near_synonym_swap_by_the_lookups_cosine() {
    // cosine 1.0 vouches for top/best; [1, 0.7, 0, 0] is at about 0.82, below
    // the guard's 0.9 and above the cache's 0.8: the guard rejects there
    for (v, hit) in [([1.0, 0.0, 0.0, 0.0], true), ([1.0, 0.7, 0.0, 0.0], false)] {
        let c = cache(0.8, true);
        c.insert(
            vec![item(
                "list the top five simulators",
                "",
                [1.0, 0.0, 0.0, 0.0],
                &[],
            )],
            0.0,
        )
        .unwrap();
        let q = "list the best five simulators";
        let found = lookup(&c, vec![query(q, "", None)], &[(q, v)], 1.0);
        let s = c.stats().counters;
        if hit {
            assert_eq!(response(&found[0]), Some("list the top five simulators"));
            assert_eq!(s.total_rejections(), 0);
        } else {
            assert!(found[0].is_none());
            assert_eq!(s.guard_rejections.get("substitution"), Some(&1));
        }
    }
}

#[test]
fn the_guard_passes_an_accepted_candidate_after_rejected_ones() {
    let c = cache(0.5, true);
    c.insert(
        vec![
            item("is it safe to fly", "", [1.0, 0.0, 0.0, 0.0], &[]),
            item(
                "is it safe to travel by plane",
                "",
                [0.9, 0.3, 0.0, 0.0],
                &[],
            ),
        ],
        0.0,
    )
    .unwrap();
    let found = lookup(
        &c,
        vec![query("is it not safe to fly", "", None)],
        &[("is it not safe to fly", [1.0, 0.0, 0.0, 0.0])],
        1.0,
    );
    assert_eq!(response(&found[0]), Some("is it safe to travel by plane"));
    assert_eq!(
        c.stats().counters.guard_rejections.get("negation"),
        Some(&1)
    );
}

#[test]
fn an_insert_is_all_or_nothing() {
    let c = cache(0.9, true);
    let mut huge = item("huge", "", [0.0, 1.0, 0.0, 0.0], &[]);
    huge.response = vec![0; 2 << 20];
    let err = c
        .insert(vec![item("fine", "", [1.0, 0.0, 0.0, 0.0], &[]), huge], 0.0)
        .unwrap_err();
    assert!(matches!(
        err,
        CacheError::Store(StoreError::TooLarge { .. })
    ));
    assert!(err.to_string().contains("max_memory_mb"));
    let mut short = item("short", "", [0.0, 1.0, 0.0, 0.0], &[]);
    short.vector.pop();
    let err = c
        .insert(
            vec![item("fine", "", [1.0, 0.0, 0.0, 0.0], &[]), short],
            0.0,
        )
        .unwrap_err();
    assert_eq!(
        err,
        CacheError::Store(StoreError::Dimension {
            got: 3,
            expected: 4
        })
    );
    assert!(c.is_empty());
    assert_eq!((c.memory_bytes(), c.stats().counters.inserts), (0, 0));
    assert_eq!(
        c.insert(vec![item("fine", "", [1.0, 0.0, 0.0, 0.0], &[])], 0.0),
        Ok(1)
    );
}

#[test]
fn invalidation_by_prompt_partition_and_tag() {
    let c = cache(0.9, true);
    c.insert(
        vec![
            item("one", "p", [1.0, 0.0, 0.0, 0.0], &["x"]),
            item("two", "p", [0.0, 1.0, 0.0, 0.0], &["y"]),
            item("three", "q", [0.0, 0.0, 1.0, 0.0], &["x"]),
            item("four", "q", [0.0, 0.0, 0.0, 1.0], &[]),
        ],
        0.0,
    )
    .unwrap();
    assert!(!c.invalidate("one", "q"));
    assert!(c.invalidate("ONE ", "p"));
    assert_eq!(c.invalidate_tag("x"), 1);
    assert_eq!(c.invalidate_tag("x"), 0);
    assert_eq!(c.invalidate_partition("p"), 1);
    assert_eq!(c.invalidate_partition("p"), 0);
    assert_eq!(c.len(), 1);
    let s = c.stats();
    assert_eq!((s.counters.invalidations, s.partitions), (3, 1));
    c.clear();
    assert!(c.is_empty());
    assert_eq!(
        c.stats().counters.invalidations,
        3,
        "clear keeps the statistics"
    );
}

#[test]
fn statistics_and_expiry() {
    let c = cache(0.9, true);
    c.insert(vec![item("a", "", [1.0, 0.0, 0.0, 0.0], &[])], 0.0)
        .unwrap();
    let mut short = item("b", "", [0.0, 1.0, 0.0, 0.0], &[]);
    short.ttl = 5.0;
    c.insert(vec![short], 0.0).unwrap();
    let found = lookup(
        &c,
        vec![query("a", "", None), query("b", "", None)],
        &[("b", [0.0, 1.0, 0.0, 0.0])],
        10.0,
    );
    assert!(found[0].as_ref().is_some_and(|f| f.age == 10.0));
    assert!(found[1].is_none(), "expired at 5");
    let s = c.stats();
    assert_eq!(s.entries, 1);
    assert_eq!(s.counters.expirations, 1);
    assert_eq!(s.counters.hit_rate(), 0.5);
    assert!(s.counters.latency_quantile(0.99) >= s.counters.latency_quantile(0.5));
    assert_eq!(s.max_memory_bytes, 1 << 20);
    assert_eq!((s.flat_indexes, s.hnsw_indexes), (1, 0));
    assert!(s.memory_bytes > 0);
    c.reset_stats();
    assert_eq!(c.stats().counters.lookups(), 0);
    assert_eq!(c.len(), 1);
}

#[test]
fn flight_keys_follow_the_exact_tier() {
    let c = cache(0.9, true);
    assert_eq!(
        c.flight_key("Hello  World", "p").unwrap(),
        c.flight_key("hello world", "p").unwrap()
    );
    assert_ne!(
        c.flight_key("hello", "p").unwrap(),
        c.flight_key("hello", "q").unwrap()
    );
    assert!(c.flight_key("  ", "p").is_err());
}

#[test]
fn snapshots_round_trip_and_check_the_embedder() {
    let dir = std::env::temp_dir().join(format!("llmedge-cache-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("snap.bin");
    let c = cache(0.9, true);
    let mut with_meta = item("b", "q", [0.0, 1.0, 0.0, 0.0], &["t"]);
    with_meta.metadata = Some(b"{}".to_vec());
    c.insert(
        vec![item("a", "p", [1.0, 0.0, 0.0, 0.0], &[]), with_meta],
        0.0,
    )
    .unwrap();
    assert_eq!(c.save(&path, 10.0), Ok(2));

    let d = cache(0.9, true);
    d.insert(vec![item("gone", "", [0.0, 0.0, 1.0, 0.0], &[])], 0.0)
        .unwrap();
    assert_eq!(d.load_snapshot(&path, 1000.0), Ok(2));
    assert_eq!(d.len(), 2);
    let found = d.lookup_exact(vec![query("b", "q", None), query("gone", "", None)], 1000.0);
    let found = found.into_found();
    // Ages are relative: 10 s old when saved.
    assert!(found[0]
        .as_ref()
        .is_some_and(|f| f.age == 10.0 && f.metadata.is_some()));
    assert!(found[1].is_none(), "a load replaces the contents");
    assert_eq!(d.invalidate_tag("t"), 1);

    let other = Cache::new(config(0.9, true), "another-embedder").unwrap();
    assert!(matches!(
        other.load_snapshot(&path, 0.0),
        Err(SnapshotError::Identity { .. })
    ));
    assert!(other.is_empty());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn an_invalid_config_is_refused() {
    let mut cfg = config(0.9, true);
    cfg.max_entries = 0;
    assert!(matches!(
        Cache::new(cfg, "e"),
        Err(CacheError::Invalid(m)) if m.starts_with("max_entries")
    ));
}

/// A cache with a bound on the error rate; threshold 0.5 is the floor.
fn bounded(eps: f64) -> Cache {
    let cfg = CacheConfig {
        max_error_rate: Some(eps),
        seed: Some(3),
        ..config(0.5, false)
    };
    Cache::new(cfg, "test-embedder").unwrap()
}

/// One semantic lookup of `v` in partition "": the hit and the refused
/// candidate.
fn probed(c: &Cache, v: [f32; 4]) -> (Option<Found>, Option<Found>) {
    let phase = c.lookup_exact(vec![query("q", "", Some(v))], 0.0);
    let (mut hits, mut probes) = c.lookup_semantic_probed(phase, Vec::new());
    (hits.remove(0), probes.remove(0))
}

#[test]
fn the_error_bounded_mode_refuses_until_it_has_evidence() {
    let eps = 0.2;
    let need = crate::cache::learn::least_evidence(eps);
    let c = bounded(eps);
    c.insert(vec![item("a", "", [1.0, 0.0, 0.0, 0.0], &[])], 0.0)
        .unwrap();
    let near = [1.0, 0.3, 0.0, 0.0];
    let (hit, probe) = probed(&c, near);
    assert!(hit.is_none(), "young: a miss");
    let probe = probe.unwrap();
    let token = probe.token.unwrap();
    for k in 0..need {
        assert!(c.observe(&token, true, Source::Probe));
        assert_eq!(probed(&c, near).0.is_some(), k + 1 >= need, "{k}");
    }
    let st = c.stats();
    assert_eq!(st.counters.learn.probed, need);
    assert_eq!(st.partition_thresholds.len(), 1);
    assert_eq!(st.entry_thresholds, 1, "enough of its own");
    // less similar than anything observed: still refused
    assert!(probed(&c, [1.0, 1.0, 0.0, 0.0]).0.is_none());
    assert!(c.stats().counters.learn.refused > need);

    // what it learned survives a snapshot
    let dir = std::env::temp_dir().join(format!("llmedge-ebound-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("snap.bin");
    assert_eq!(c.save(&path, 0.0), Ok(1));
    let d = bounded(eps);
    assert_eq!(d.load_snapshot(&path, 0.0), Ok(1));
    assert!(probed(&d, near).0.is_some());
    assert_eq!(d.stats().observations, need as usize);
    std::fs::remove_dir_all(&dir).unwrap();

    // a wrong answer vetoes its entry at that similarity and below
    let e = bounded(eps);
    e.insert(vec![item("a", "", [1.0, 0.0, 0.0, 0.0], &[])], 0.0)
        .unwrap();
    let closer = [1.0, 0.1, 0.0, 0.0];
    let t = probed(&e, closer).1.unwrap().token.unwrap();
    for _ in 0..need {
        e.observe(&t, true, Source::Feedback);
    }
    let wrong = probed(&e, near).1.unwrap().token.unwrap();
    assert!(e.observe(&wrong, false, Source::Feedback));
    assert!(probed(&e, near).0.is_none());
    assert!(probed(&e, closer).0.is_some());
}

#[test]
fn observations_of_a_replaced_entry_are_refused_and_replicas_share_learning() {
    let c = bounded(0.1);
    c.insert(vec![item("a", "p", [1.0, 0.0, 0.0, 0.0], &[])], 0.0)
        .unwrap();
    let phase = c.lookup_exact(vec![query("a", "p", None)], 0.0);
    let exact = phase.into_found().remove(0).unwrap();
    let token = exact.token.unwrap();
    assert!(c.observe(&token, true, Source::Feedback));
    let item_out = c.entry_for_replica(&token, 0.0).unwrap();
    assert_eq!(item_out.partition, "p");
    assert_eq!(item_out.learning.total, 1);
    // another process inserts it: its partition learns the observation once
    let other = bounded(0.1);
    other.insert(vec![item_out.clone()], 0.0).unwrap();
    other.insert(vec![item_out], 0.0).unwrap();
    assert_eq!(other.stats().observations, 1);
    // replaced by a fresh answer: the old hit names nothing
    c.insert(vec![item("a", "p", [1.0, 0.0, 0.0, 0.0], &[])], 0.0)
        .unwrap();
    assert!(!c.observe(&token, false, Source::Feedback));
    assert_eq!(c.stats().counters.learn.feedback, 1);
}
