//! Tests of the HNSW index: recall, churn, slot reuse and odd dimensions.
#![allow(clippy::unwrap_used)]

use super::*;
use crate::cache::index::simd::Kernels;

fn dot(a: &[f32], b: &[f32]) -> f32 {
    Kernels::detect().dot(a, b)
}

struct Rng(u64);
impl Rng {
    fn uniform(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
    fn gauss(&mut self) -> f32 {
        let (u, v) = (self.uniform().max(1e-12), self.uniform());
        ((-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()) as f32
    }
}

fn unit(mut v: Vec<f32>) -> Vec<f32> {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter_mut().for_each(|x| *x /= n);
    v
}

/// Clustered unit vectors (20 per cluster, like benches/bench_cache.py)
/// and queries near some of them (cosine about 0.9).
fn clustered(n: usize, dim: usize, queries: usize, seed: u64) -> (Vec<Vec<f32>>, Vec<Vec<f32>>) {
    let mut r = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let nc = (n / 20).max(1);
    let centers: Vec<Vec<f32>> = (0..nc)
        .map(|_| (0..dim).map(|_| r.gauss()).collect())
        .collect();
    let stored: Vec<Vec<f32>> = (0..n)
        .map(|i| {
            unit(
                centers[(i * 7919) % nc]
                    .iter()
                    .map(|x| x + 0.6 * r.gauss())
                    .collect(),
            )
        })
        .collect();
    let qs = (0..queries)
        .map(|j| {
            unit(
                stored[(j * 7717) % n]
                    .iter()
                    .map(|x| x + 0.025 * r.gauss())
                    .collect(),
            )
        })
        .collect();
    (stored, qs)
}

/// An index holding `stored[i]` under id `i`.
fn built(stored: &[Vec<f32>], dim: usize) -> HnswIndex {
    let mut h = HnswIndex::new(dim, HnswParams::default());
    for (i, v) in stored.iter().enumerate() {
        h.add(i as u32, v);
    }
    h
}

fn exact_best(stored: &[Vec<f32>], q: &[f32]) -> u32 {
    let mut best = (0, f32::MIN);
    for (i, v) in stored.iter().enumerate() {
        let s = dot(q, v);
        if s > best.1 {
            best = (i as u32, s);
        }
    }
    best.0
}

#[test]
fn recall_on_clustered_vectors() {
    let (stored, qs) = clustered(3000, 96, 100, 7);
    let mut h = built(&stored, 96);
    let hits = qs
        .iter()
        .filter(|q| h.search(q, 4, 0.0).first().map(|x| x.0) == Some(exact_best(&stored, q)))
        .count();
    assert!(hits >= 99, "{hits}/100");
    // Scores are exact up to half precision.
    let q = &qs[0];
    for (id, s) in h.search(q, 4, 0.0) {
        let exact = dot(q, &stored[id as usize]);
        assert!((s - exact).abs() < 2e-3, "{s} vs {exact}");
    }
}

#[test]
fn add_many_matches_one_by_one_recall_and_is_deterministic() {
    let (stored, qs) = clustered(6000, 96, 100, 11);
    let items: Vec<(u32, Vec<f32>)> = stored
        .iter()
        .enumerate()
        .map(|(i, v)| (i as u32, v.clone()))
        .collect();
    let mut a = HnswIndex::new(96, HnswParams::default());
    a.add_many(&items);
    assert_eq!(a.len(), stored.len());
    let hits = qs
        .iter()
        .filter(|q| a.search(q, 4, 0.0).first().map(|x| x.0) == Some(exact_best(&stored, q)))
        .count();
    assert!(hits >= 99, "{hits}/100");
    // The same entries in the same order give the same graph, on any pool.
    let mut b = HnswIndex::new(96, HnswParams::default());
    rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap()
        .install(|| b.add_many(&items));
    for q in &qs {
        assert_eq!(a.search(q, 4, 0.0), b.search(q, 4, 0.0));
    }
    // Replacing and repeating ids: the last vector of each id stays.
    let mut again: Vec<(u32, Vec<f32>)> = items[..3000].iter().rev().cloned().collect();
    again.push((5, stored[7].clone()));
    a.add_many(&again);
    assert_eq!(a.len(), stored.len());
    assert_eq!(a.search(&stored[7], 2, 0.0).len(), 2);
    let v5 = a.vector(5).unwrap();
    assert!(dot(&v5, &stored[7]) > 0.999);
}

/// Timing and recall at a given size: `N=100000 cargo test --release
/// --lib hnsw_timing -- --ignored --nocapture`.
#[test]
#[ignore]
fn hnsw_timing() {
    let n: usize = std::env::var("N")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20000);
    let mut p = HnswParams::default();
    if let Some(x) = std::env::var("EF").ok().and_then(|s| s.parse().ok()) {
        p.expansion_search = x;
    }
    if let Some(x) = std::env::var("EA").ok().and_then(|s| s.parse().ok()) {
        p.expansion_add = x;
    }
    if let Some(x) = std::env::var("RR").ok().and_then(|s| s.parse().ok()) {
        p.rerank = x;
    }
    if let Some(x) = std::env::var("M").ok().and_then(|s| s.parse().ok()) {
        p.connectivity = x;
    }
    let (stored, qs) = clustered(n, 384, 300, 1);
    let mut h = HnswIndex::new(384, p);
    let t = std::time::Instant::now();
    // SEED=k inserts in another order (a different graph).
    let seed: usize = std::env::var("SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let order = (0..n).map(|j| {
        if seed == 0 {
            j
        } else {
            (j * 7919 + seed * 104_729) % n
        }
    });
    // BATCH=1 builds with `add_many` (all cores).
    if std::env::var("BATCH").is_ok_and(|b| b == "1") {
        let items: Vec<(u32, Vec<f32>)> = order.map(|i| (i as u32, stored[i].clone())).collect();
        h.add_many(&items);
    } else {
        for i in order {
            h.add(i as u32, &stored[i]);
        }
    }
    eprintln!(
        "{p:?} build {:?} ({:.0}/s)",
        t.elapsed(),
        n as f64 / t.elapsed().as_secs_f64()
    );
    let truth: Vec<u32> = qs.iter().map(|q| exact_best(&stored, q)).collect();
    let efs: Vec<usize> = std::env::var("EFS")
        .unwrap_or_else(|_| "64".into())
        .split(',')
        .filter_map(|x| x.parse().ok())
        .collect();
    for ef in efs {
        h.set_search(ef, ef.min(p.rerank.max(8)));
        eprint!("ef {ef} rerank {} ", h.params.rerank);
        let mut lat = Vec::new();
        let mut ok = 0;
        let reps: usize = std::env::var("REPS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(1);
        for _ in 1..reps {
            for q in &qs {
                std::hint::black_box(h.search(q, 4, 0.5));
            }
        }
        for (q, t) in qs.iter().zip(&truth) {
            let t0 = std::time::Instant::now();
            let r = h.search(q, 4, 0.5);
            lat.push(t0.elapsed().as_secs_f64() * 1e6);
            ok += usize::from(r.first().map(|x| x.0) == Some(*t));
        }
        lat.sort_by(f64::total_cmp);
        let mut best_batch = f64::MAX;
        for _ in 0..7 {
            let t0 = std::time::Instant::now();
            for q in &qs {
                std::hint::black_box(h.search(q, 4, 0.5));
            }
            best_batch = best_batch.min(t0.elapsed().as_secs_f64() * 1e6 / qs.len() as f64);
        }
        eprint!("best batch mean {best_batch:.1}us ");
        let t = std::time::Instant::now();
        for _ in 0..1000 {
            let _ = h.coder.encode(&qs[0]);
        }
        eprintln!(
            "p50 {:.1}us p99 {:.1}us recall {} encode {:?} mem/entry {}",
            lat[150],
            lat[296],
            ok as f64 / 300.0,
            t.elapsed() / 1000,
            h.memory_bytes() / n
        );
    }
}

#[test]
fn add_search_remove_reuse() {
    let mut h = HnswIndex::new(8, HnswParams::default());
    let mut vs = Vec::new();
    for i in 0..200u32 {
        let mut v: Vec<f32> = (0..8)
            .map(|j| ((i * 7 + j * 13) % 17) as f32 - 8.0)
            .collect();
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.iter_mut().for_each(|x| *x /= n);
        h.add(i, &v);
        vs.push(v);
    }
    assert_eq!(h.len(), 200);
    let r = h.search(&vs[5], 1, 0.99);
    assert_eq!(r.len(), 1);
    assert!(h.remove(5));
    let r = h.search(&vs[5], 4, 0.0);
    assert!(r.iter().all(|(id, _)| *id != 5));
    assert_eq!(h.len(), 199);
    let mem = h.memory_bytes();
    for round in 0..5u32 {
        for i in 0..100u32 {
            h.remove(i);
        }
        for i in 0..100u32 {
            h.add(i, &vs[((i + round) % 200) as usize]);
        }
    }
    assert_eq!(h.len(), 200);
    assert!(
        h.memory_bytes() <= mem * 2,
        "{} vs {}",
        h.memory_bytes(),
        mem
    );
    let back = h.vector(150).unwrap();
    assert!(back.iter().zip(&vs[150]).all(|(a, b)| (a - b).abs() < 1e-3));
}

/// Eviction-like churn: entries leave and new ones reuse their slots.
/// Removed ids never come back, every live entry stays findable, and the
/// index does not grow.
#[test]
fn churn_keeps_results_live_and_findable() {
    let dim = 64;
    let (pool, _) = clustered(6000, dim, 0, 3);
    let mut h = HnswIndex::new(dim, HnswParams::default());
    let mut live: HashMap<u32, usize> = HashMap::new();
    let mut next = 0usize;
    for id in 0..2000u32 {
        h.add(id, &pool[next]);
        live.insert(id, next);
        next += 1;
    }
    let peak = h.memory_bytes();
    let mut id = 2000u32;
    for round in 0..4 {
        // Oldest 1,000 out (as LRU eviction would), 1,000 new in.
        let mut old: Vec<u32> = live.keys().copied().collect();
        old.sort_unstable();
        for gone in old.into_iter().take(1000) {
            assert!(h.remove(gone));
            assert!(!h.remove(gone));
            live.remove(&gone);
            assert!(h.vector(gone).is_none());
        }
        for _ in 0..1000 {
            h.add(id, &pool[next % pool.len()]);
            live.insert(id, next % pool.len());
            id += 1;
            next += 1;
        }
        assert_eq!(h.len(), live.len());
        let mut found = 0;
        let mut sample: Vec<(u32, usize)> = live.iter().map(|(&i, &r)| (i, r)).collect();
        sample.sort_unstable();
        for &(want, row) in sample.iter().step_by(sample.len() / 300).take(300) {
            let r = h.search(&pool[row], 4, -1.0);
            assert!(
                r.iter().all(|(got, _)| live.contains_key(got)),
                "round {round}"
            );
            found += usize::from(r.first().map(|x| x.0) == Some(want));
        }
        assert!(found >= 294, "round {round}: {found}/300");
        assert!(
            h.memory_bytes() <= peak + peak / 4,
            "{} vs {peak}",
            h.memory_bytes()
        );
    }
}

#[test]
fn removing_the_entry_point_and_everything() {
    let (stored, _) = clustered(500, 32, 0, 5);
    let mut h = built(&stored, 32);
    // The entry point and every node with upper levels leave.
    let tops: Vec<u32> = (0..500u32)
        .filter(|&i| h.levels[h.slot_of[&i] as usize] > 0 || h.slot_of[&i] == h.entry)
        .collect();
    assert!(!tops.is_empty());
    for &i in &tops {
        h.remove(i);
    }
    let q = &stored[(0..500).find(|i| !tops.contains(&(*i as u32))).unwrap()];
    let r = h.search(q, 3, -1.0);
    assert!(!r.is_empty());
    assert!(r.iter().all(|(id, _)| !tops.contains(id)));
    for i in 0..500u32 {
        h.remove(i);
    }
    assert_eq!(h.len(), 0);
    assert!(h.search(q, 3, -1.0).is_empty());
    assert_eq!(h.memory_bytes(), 0);
    h.add(7, q);
    assert_eq!(h.search(q, 3, 0.5).first().map(|x| x.0), Some(7));
}

proptest::proptest! {
    /// Any sequence of adds (new ids and overwrites) and removes: results
    /// are live ids only, without duplicates, best first, with scores
    /// within half-precision error of the exact ones.
    #[test]
    fn results_are_live_sorted_and_exact(
        ops in proptest::collection::vec((0u32..40, proptest::bool::ANY, 0usize..60), 1..150),
        k in 1usize..10,
    ) {
        let (pool, _) = clustered(60, 16, 0, 11);
        let mut h = HnswIndex::new(16, HnswParams::default());
        let mut model: HashMap<u32, usize> = HashMap::new();
        for (id, add, row) in ops {
            if add {
                h.add(id, &pool[row]);
                model.insert(id, row);
            } else {
                proptest::prop_assert_eq!(h.remove(id), model.remove(&id).is_some());
            }
            proptest::prop_assert_eq!(h.len(), model.len());
        }
        let q = &pool[0];
        let r = h.search(q, k, -1.0);
        proptest::prop_assert!(r.len() <= k.min(model.len()));
        proptest::prop_assert!(model.is_empty() || !r.is_empty());
        for id in 0u32..40 {
            let back = h.vector(id);
            proptest::prop_assert_eq!(back.is_some(), model.contains_key(&id));
            if let (Some(back), Some(&row)) = (back, model.get(&id)) {
                proptest::prop_assert!(back.iter().zip(&pool[row]).all(|(a, b)| (a - b).abs() < 1e-3));
            }
        }
        let mut seen = std::collections::HashSet::new();
        for w in r.windows(2) {
            proptest::prop_assert!(w[0].1 >= w[1].1);
        }
        for (id, score) in r {
            proptest::prop_assert!(seen.insert(id));
            let row = model.get(&id).copied();
            proptest::prop_assert!(row.is_some(), "{} is not live", id);
            let exact = dot(q, &pool[row.unwrap_or(0)]);
            proptest::prop_assert!((score - exact).abs() < 2e-3);
        }
    }
}

/// Dimensions that are not a multiple of 64 and above 512 (1,024-bit
/// codes); a huge `k` is capped at the number of entries.
#[test]
fn odd_and_large_dimensions() {
    for dim in [3usize, 100, 700] {
        let (stored, qs) = clustered(400, dim, 20, 9);
        let mut h = built(&stored, dim);
        let hits = qs
            .iter()
            .filter(|q| h.search(q, 1, -1.0).first().map(|x| x.0) == Some(exact_best(&stored, q)))
            .count();
        assert!(hits >= 17, "dim {dim}: {hits}/20");
        assert_eq!(h.search(&qs[0], usize::MAX, -1.0).len(), 400);
    }
}
