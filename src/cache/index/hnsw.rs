//! Approximate nearest-neighbour search with an HNSW graph (the `usearch`
//! crate) over compact sign codes, with an exact re-rank.
//!
//! Measured on this project's machine, one f32 distance between 384-dim
//! vectors read from a 100,000-entry index costs about 1 us (a random read of
//! 1.5 KB), and a search at recall 0.99 makes about 1,200 of them. So the
//! graph is built and walked over 64-byte random-hyperplane sign codes
//! (Hamming distance estimates the angle, see `quant::SignCoder`): one cache
//! line per node. The best `rerank` candidates of the walk are then scored
//! exactly against half-precision copies of the vectors, which are also what
//! `vector()` returns (binary16 keeps 11 significant bits: scores change by
//! about 1e-4).
//!
//! Removal frees the node's slot in the graph, which the next insertion
//! reuses, and its row, so churn from eviction and expiry does not grow the
//! index.

use std::collections::HashMap;

use usearch::{b1x8, Index as UIndex, IndexOptions, MetricKind, ScalarKind};

use super::quant::{dot_f16, f16_to_f32, f32_to_f16, hamming, prefetch, SignCoder};
use super::VectorIndex;

/// Graph parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HnswParams {
    /// Links per node on the upper levels (twice this on the base level).
    pub connectivity: usize,
    /// Candidate list size while inserting.
    pub expansion_add: usize,
    /// Candidate list size while searching.
    pub expansion_search: usize,
    /// Candidates of the graph walk scored exactly.
    pub rerank: usize,
}

impl Default for HnswParams {
    fn default() -> Self {
        HnswParams {
            connectivity: 16,
            expansion_add: 96,
            expansion_search: 64,
            rerank: 32,
        }
    }
}

impl HnswParams {
    /// Bytes one entry costs: its half-precision vector, its sign code, its
    /// base-level links (2M of 4 bytes), its key and node header, the
    /// expected share of upper levels, and its row in the id map.
    pub fn bytes_per_entry(&self, dim: usize) -> usize {
        dim * 2
            + SignCoder::new(dim).bytes()
            + 2 * self.connectivity * 4
            + self.connectivity * 4 / 8
            + 40
            + ROW_MAP_BYTES
    }
}

/// Id-to-row map entry (key, value, control byte and load-factor headroom)
/// plus the row-to-id slot.
const ROW_MAP_BYTES: usize = 16 + 4;

pub struct HnswIndex {
    dim: usize,
    params: HnswParams,
    coder: SignCoder,
    inner: Option<UIndex>,
    /// Half-precision vectors, `dim` per row.
    rows: Vec<u16>,
    /// Id of each row (`u32::MAX` when free).
    row_ids: Vec<u32>,
    row_of: HashMap<u32, u32>,
    free_rows: Vec<u32>,
}

impl HnswIndex {
    pub fn new(dim: usize, params: HnswParams) -> Self {
        HnswIndex {
            dim,
            params,
            coder: SignCoder::new(dim),
            inner: None,
            rows: Vec::new(),
            row_ids: Vec::new(),
            row_of: HashMap::new(),
            free_rows: Vec::new(),
        }
    }

    fn index(&mut self) -> Option<&UIndex> {
        if self.inner.is_none() {
            let options = IndexOptions {
                dimensions: self.coder.bits(),
                metric: MetricKind::Hamming,
                quantization: ScalarKind::B1,
                connectivity: self.params.connectivity,
                expansion_add: self.params.expansion_add,
                expansion_search: self.params.expansion_search,
                multi: false,
            };
            self.inner = UIndex::new(&options).ok().map(|mut index| {
                // usearch without its SIMD kernels (numkong: a long C build)
                // counts bits byte by byte; ours counts 64 at a time.
                let words = self.coder.bytes() / 8;
                index.change_metric::<b1x8>(Box::new(move |a: *const b1x8, b: *const b1x8| {
                    // SAFETY: usearch passes pointers to two stored or query
                    // codes of the index's `bits / 8` bytes.
                    unsafe { hamming(a as *const u8, b as *const u8, words) as f32 }
                }));
                index
            });
        }
        self.inner.as_ref()
    }

    fn row(&self, id: u32) -> Option<&[u16]> {
        let r = *self.row_of.get(&id)? as usize * self.dim;
        self.rows.get(r..r + self.dim)
    }

    fn put_row(&mut self, id: u32, v: &[f32]) {
        let row = match self.row_of.get(&id) {
            Some(&r) => r,
            None => {
                let r = match self.free_rows.pop() {
                    Some(r) => r,
                    None => {
                        self.row_ids.push(u32::MAX);
                        self.rows.resize(self.row_ids.len() * self.dim, 0);
                        (self.row_ids.len() - 1) as u32
                    }
                };
                self.row_of.insert(id, r);
                self.row_ids[r as usize] = id;
                r
            }
        };
        let at = row as usize * self.dim;
        for (dst, &x) in self.rows[at..at + self.dim].iter_mut().zip(v) {
            *dst = f32_to_f16(x);
        }
    }

    fn drop_row(&mut self, id: u32) {
        if let Some(r) = self.row_of.remove(&id) {
            self.row_ids[r as usize] = u32::MAX;
            self.free_rows.push(r);
        }
        if self.row_of.is_empty() {
            self.rows = Vec::new();
            self.row_ids = Vec::new();
            self.free_rows = Vec::new();
        }
    }

    fn rows_bytes(&self) -> usize {
        self.rows.capacity() * 2
            + self.row_ids.capacity() * 4
            + self.free_rows.capacity() * 4
            + self.row_of.capacity() * 9
    }

    /// Bytes held beyond what the live entries account for (slots of removed
    /// entries awaiting reuse, reserved capacity).
    pub fn slack_bytes(&self) -> usize {
        self.memory_bytes()
            .saturating_sub(self.len() * self.params.bytes_per_entry(self.dim))
    }
}

impl VectorIndex for HnswIndex {
    fn len(&self) -> usize {
        self.inner.as_ref().map_or(0, |i| i.size())
    }

    fn add(&mut self, id: u32, v: &[f32]) {
        let code = self.coder.encode(v);
        let Some(i) = self.index() else { return };
        let key = u64::from(id);
        if i.contains(key) {
            let _ = i.remove(key);
        }
        if i.size() + 1 > i.capacity() {
            // Grow by a quarter: reserved but unused slots are memory too.
            let _ = i.reserve(i.capacity() + (i.capacity() / 4).max(64));
        }
        if i.add(key, b1x8::from_u8s(&code)).is_ok() {
            self.put_row(id, v);
        } else {
            self.drop_row(id);
        }
    }

    fn remove(&mut self, id: u32) -> bool {
        let removed = match &self.inner {
            Some(i) => i.remove(u64::from(id)).map(|n| n > 0).unwrap_or(false),
            None => false,
        };
        self.drop_row(id);
        removed
    }

    fn vector(&self, id: u32) -> Option<Vec<f32>> {
        Some(self.row(id)?.iter().map(|&h| f16_to_f32(h)).collect())
    }

    fn search(&mut self, q: &[f32], k: usize, min_score: f32) -> Vec<(u32, f32)> {
        let Some(i) = &self.inner else {
            return Vec::new();
        };
        if k == 0 || i.size() == 0 {
            return Vec::new();
        }
        let code = self.coder.encode(q);
        let Ok(m) = i.search(b1x8::from_u8s(&code), self.params.rerank.max(k)) else {
            return Vec::new();
        };
        // Start every candidate's row load before scoring the first.
        let rows: Vec<(u32, usize)> = m
            .keys
            .iter()
            .filter_map(|&key| {
                let id = u32::try_from(key).ok()?;
                let at = *self.row_of.get(&id)? as usize * self.dim;
                Some((id, at))
            })
            .collect();
        for &(_, at) in &rows {
            prefetch(self.rows[at..].as_ptr() as *const u8, self.dim * 2);
        }
        let mut scored: Vec<(u32, f32)> = rows
            .into_iter()
            .map(|(id, at)| (id, dot_f16(q, &self.rows[at..at + self.dim])))
            .filter(|&(_, s)| s >= min_score)
            .collect();
        scored.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        scored.truncate(k);
        scored
    }

    fn memory_bytes(&self) -> usize {
        self.inner.as_ref().map_or(0, |i| i.memory_usage()) + self.rows_bytes()
    }

    fn bytes_per_entry(&self) -> usize {
        self.params.bytes_per_entry(self.dim)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

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
    fn clustered(
        n: usize,
        dim: usize,
        queries: usize,
        seed: u64,
    ) -> (Vec<Vec<f32>>, Vec<Vec<f32>>) {
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

    fn exact_best(stored: &[Vec<f32>], q: &[f32]) -> u32 {
        let mut best = (0, f32::MIN);
        for (i, v) in stored.iter().enumerate() {
            let s = crate::cache::index::dot(q, v);
            if s > best.1 {
                best = (i as u32, s);
            }
        }
        best.0
    }

    #[test]
    fn recall_on_clustered_vectors() {
        let (stored, qs) = clustered(3000, 96, 100, 7);
        let mut h = HnswIndex::new(96, HnswParams::default());
        for (i, v) in stored.iter().enumerate() {
            h.add(i as u32, v);
        }
        let hits = qs
            .iter()
            .filter(|q| h.search(q, 4, 0.0).first().map(|x| x.0) == Some(exact_best(&stored, q)))
            .count();
        assert!(hits >= 99, "{hits}/100");
        // Scores are exact up to half precision.
        let q = &qs[0];
        for (id, s) in h.search(q, 4, 0.0) {
            let exact = crate::cache::index::dot(q, &stored[id as usize]);
            assert!((s - exact).abs() < 2e-3, "{s} vs {exact}");
        }
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
        for (i, v) in stored.iter().enumerate() {
            h.add(i as u32, v);
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
            h.params.expansion_search = ef;
            h.params.rerank = ef.min(p.rerank.max(8));
            h.inner.as_ref().unwrap().change_expansion_search(ef);
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
}
