//! Approximate nearest-neighbour search with an HNSW graph (hierarchical
//! navigable small world, Malkov and Yashunin) over compact sign codes, with
//! an exact re-rank.
//!
//! Measured on this project's machine, one f32 distance between 384-dim
//! vectors read from a 100,000-entry index costs about 1 us (a random read of
//! 1.5 KB), and a search at recall 0.99 makes over a thousand of them. So the
//! graph is built and walked over random-hyperplane sign codes (Hamming
//! distance estimates the angle, see `quant::SignCoder`; 64 bytes, one cache
//! line, for up to 512 dimensions), and before a node's neighbours are
//! scored, the loads of all their codes are started at once, so a hop costs
//! about one memory latency rather than one per neighbour. The best `rerank`
//! candidates of the walk are then scored exactly against half-precision
//! copies of the vectors, which are also what `vector()` returns (binary16
//! keeps 11 significant bits: scores change by about 1e-4).
//!
//! Removal marks the node's slot free: the node keeps guiding walks (it is
//! never returned) until the next insertion reuses the slot, which gives the
//! node the new vector and new links. So churn from eviction and expiry does
//! not grow the index.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use self::memory::{links_of, LineVec, Visited};
use super::quant::{f16_to_f32, f32_to_f16, ham, SignCoder};
#[cfg(target_arch = "x86_64")]
use super::simd::has_popcnt;
use super::simd::{prefetch, Kernels};
use super::VectorIndex;

mod batch;
mod memory;

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
            expansion_add: 100,
            expansion_search: 40,
            rerank: 32,
        }
    }
}

impl HnswParams {
    /// Bytes one entry costs: its half-precision vector, its sign code, its
    /// base-level links (2M ids of 4 bytes and a count), its level and id,
    /// the expected share of upper levels (one node in M has them, in a
    /// map), and its entry in the id-to-slot map.
    pub fn bytes_per_entry(&self, dim: usize) -> usize {
        let m = self.connectivity.clamp(2, 64);
        dim * 2
            + SignCoder::bits_for(dim) / 8
            + 2 * m * 4
            + 1
            + 1
            + 4
            + ((m + 1) * 4 + UPPER_MAP_BYTES).div_ceil(m - 1)
            + SLOT_MAP_BYTES
    }
}

/// Id-to-slot map entry (key, value, control byte and load-factor headroom).
const SLOT_MAP_BYTES: usize = 16;
/// Upper-level map entry overhead (key, boxed slice header, control byte).
const UPPER_MAP_BYTES: usize = 32;
/// Marks a free slot in `ids`.
const FREE: u32 = u32::MAX;
/// Highest level a node can get (levels are geometric: 1 in M^L nodes).
const MAX_LEVEL: usize = 15;

pub struct HnswIndex {
    dim: usize,
    params: HnswParams,
    coder: SignCoder,
    /// u64 words per code.
    words: usize,
    /// Links per node on the upper levels and on level 0.
    m: usize,
    m0: usize,
    /// Sign codes, `words` per slot (a 512-bit code is one cache line).
    codes: LineVec<u64>,
    /// Half-precision vectors, `dim` per slot.
    rows: Vec<u16>,
    /// Level-0 links, `m0` per slot (128 bytes, two lines, at the default
    /// connectivity), of which the first `degree0[slot]` are neighbours.
    links0: LineVec<u32>,
    degree0: Vec<u8>,
    /// Links on levels 1..=level for the slots that have upper levels,
    /// `m + 1` per level, laid out like `links0`.
    upper: HashMap<u32, Box<[u32]>>,
    /// Bytes `upper` holds (kept so `memory_bytes` is O(1)).
    upper_bytes: usize,
    levels: Vec<u8>,
    /// Id stored in each slot, `FREE` when removed.
    ids: Vec<u32>,
    slot_of: HashMap<u32, u32>,
    free: Vec<u32>,
    /// Entry slot of every walk and its level; `FREE` when the graph is empty.
    entry: u32,
    top: usize,
    /// Slots a search's walk has visited, and an insertion's (kept apart:
    /// their sizes differ, and each is reused without reallocating).
    seen: Visited,
    seen_add: Visited,
    rng: u64,
}

impl HnswIndex {
    pub fn new(dim: usize, params: HnswParams) -> Self {
        let coder = SignCoder::new(dim);
        // Level-0 degrees are bytes.
        let m = params.connectivity.clamp(2, 64);
        HnswIndex {
            dim,
            params,
            words: coder.bits() / 64,
            coder,
            m,
            m0: 2 * m,
            codes: LineVec::new(),
            rows: Vec::new(),
            links0: LineVec::new(),
            degree0: Vec::new(),
            upper: HashMap::new(),
            upper_bytes: 0,
            levels: Vec::new(),
            ids: Vec::new(),
            slot_of: HashMap::new(),
            free: Vec::new(),
            entry: FREE,
            top: 0,
            seen: Visited::default(),
            seen_add: Visited::default(),
            rng: 0x2545_F491_4F6C_DD1D,
        }
    }

    /// Changes the search-time candidate list sizes.
    pub fn set_search(&mut self, expansion_search: usize, rerank: usize) {
        self.params.expansion_search = expansion_search.max(1);
        self.params.rerank = rerank.max(1);
    }

    /// Slots held: live entries and those of removed ones awaiting reuse.
    pub fn slots(&self) -> usize {
        self.ids.len()
    }

    fn code(&self, slot: u32) -> &[u64] {
        let at = slot as usize * self.words;
        &self.codes[at..at + self.words]
    }

    fn row(&self, slot: u32) -> &[u16] {
        let at = slot as usize * self.dim;
        &self.rows[at..at + self.dim]
    }

    /// The links of `slot` on `level` (the slot has that level).
    fn links(&self, slot: u32, level: usize) -> &[u32] {
        links_of(
            &self.links0,
            &self.degree0,
            &self.upper,
            self.m,
            slot,
            level,
        )
    }

    fn set_links(&mut self, slot: u32, level: usize, to: &[u32]) {
        if level == 0 {
            let n = to.len().min(self.m0);
            let at = slot as usize * self.m0;
            self.links0[at..at + n].copy_from_slice(&to[..n]);
            self.degree0[slot as usize] = n as u8;
            return;
        }
        let list = {
            let m = self.m;
            let Some(u) = self.upper.get_mut(&slot) else {
                return;
            };
            let at = (level - 1) * (m + 1);
            &mut u[at..at + m + 1]
        };
        let n = to.len().min(list.len() - 1);
        list[0] = n as u32;
        list[1..1 + n].copy_from_slice(&to[..n]);
    }

    fn random_level(&mut self) -> usize {
        // xorshift64*, uniform in (0, 1]; level = floor(-ln(u) / ln(M)).
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        let u = ((self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 + 1.0)
            / (1u64 << 53) as f64;
        ((-u.ln() / (self.m as f64).ln()) as usize).min(MAX_LEVEL)
    }

    /// A slot for a new entry: a free one (still linked in the graph, its
    /// level kept) or a new one at a random level.
    fn take_slot(&mut self) -> u32 {
        if let Some(s) = self.free.pop() {
            return s;
        }
        let s = self.slots() as u32;
        if self.slots() == self.ids.capacity() {
            self.grow();
        }
        let level = self.random_level();
        self.ids.push(FREE);
        self.levels.push(level as u8);
        self.codes.grow_zeroed(self.words);
        self.rows.resize(self.rows.len() + self.dim, 0);
        self.links0.grow_zeroed(self.m0);
        self.degree0.push(0);
        if level > 0 {
            let words = level * (self.m + 1);
            self.upper.insert(s, vec![0u32; words].into_boxed_slice());
            self.upper_bytes += words * 4 + UPPER_MAP_BYTES;
        }
        s
    }

    /// Room for more slots (reserved slots are memory too; huge
    /// pages were tried for the randomly read arrays: no faster here, and
    /// 2 MB page granularity grew the RSS by a third).
    #[cold]
    fn grow(&mut self) {
        // Doubling from four slots up to 64 (a small partition holds little
        // slack), then a quarter more. The same sequence above 64 matters:
        // starting the quarters from one slot left ~1 KB/entry more resident
        // memory at 100,000 entries (the allocator kept the old copies).
        let more = if self.slots() < 64 {
            self.slots().max(4)
        } else {
            (self.slots() / 4).max(64)
        };
        self.ids.reserve_exact(more);
        self.levels.reserve_exact(more);
        self.codes.reserve_exact(more * self.words);
        self.rows.reserve_exact(more * self.dim);
        self.links0.reserve_exact(more * self.m0);
        self.degree0.reserve_exact(more);
    }

    fn insert(&mut self, id: u32, v: &[f32]) {
        let code = self.coder.encode(v);
        let s = self.take_slot();
        let at = s as usize * self.words;
        self.codes[at..at + self.words].copy_from_slice(&code);
        let at = s as usize * self.dim;
        for (dst, &x) in self.rows[at..at + self.dim].iter_mut().zip(v) {
            *dst = f32_to_f16(x);
        }
        self.ids[s as usize] = id;
        self.slot_of.insert(id, s);
        #[cfg(target_arch = "x86_64")]
        {
            if has_popcnt() {
                // SAFETY: the CPU has POPCNT.
                return unsafe { self.link_popcnt(s) };
            }
        }
        self.link_in(s)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "popcnt")]
    unsafe fn link_popcnt(&mut self, s: u32) {
        self.link_in(s)
    }

    /// Connects slot `s` (its code written) into the graph.
    #[inline(always)]
    fn link_in(&mut self, s: u32) {
        // A reused slot keeps its old links while it is placed (they may be
        // the only way on from the entry point) and gets new ones below.
        let level = self.levels[s as usize] as usize;
        if self.entry == FREE {
            self.entry = s;
            self.top = level;
            return;
        }
        let q: Vec<u64> = self.code(s).to_vec();
        let mut ep = (self.dist(&q, self.entry), self.entry);
        for l in (level + 1..=self.top).rev() {
            ep = self.greedy(&q, ep, l);
        }
        let ef = self.params.expansion_add.max(self.m0);
        for l in (0..=level.min(self.top)).rev() {
            let mut found = self.walk(&q, ep, ef, l, Some(s));
            found.sort_unstable();
            if let Some(&best) = found.first() {
                ep = best;
            }
            let cap = if l == 0 { self.m0 } else { self.m };
            let chosen = self.select(&found, cap);
            self.set_links(s, l, &chosen);
            for &n in &chosen {
                self.add_link(n, s, l);
            }
        }
        if level > self.top {
            self.entry = s;
            self.top = level;
        }
    }

    /// Adds `to` to the links of `from` on `level` (see `joined`).
    #[inline(always)]
    fn add_link(&mut self, from: u32, to: u32, level: usize) {
        let list = self.joined(from, level, std::iter::once(to));
        self.set_links(from, level, &list);
    }

    /// The links of `from` on `level` once `new` nodes link to it: appended
    /// while there is room. Once the list is full, a newcomer takes the
    /// place of the link farthest from `from` if it is nearer than that
    /// link and no other link is nearer to it than `from` is (the rule of
    /// `select`, which the list already obeys). That costs one pass over
    /// the list per newcomer; selecting the whole list again cost a pass
    /// per kept link, and was most of an insertion's time.
    fn joined(&self, from: u32, level: usize, new: impl Iterator<Item = u32>) -> Vec<u32> {
        let cap = if level == 0 { self.m0 } else { self.m };
        let q = self.code(from);
        let mut cur: Vec<u32> = self.links(from, level).to_vec();
        let mut dists: Vec<u32> = Vec::new();
        for s in new {
            if s == from || cur.contains(&s) {
                continue;
            }
            if cur.len() < cap {
                cur.push(s);
                dists.clear();
                continue;
            }
            if dists.len() != cur.len() {
                dists = cur.iter().map(|&c| ham(q, self.code(c))).collect();
            }
            let Some((far, &d_far)) = dists.iter().enumerate().max_by_key(|x| *x.1) else {
                continue;
            };
            let sc = self.code(s);
            let d = ham(q, sc);
            if d >= d_far
                || cur
                    .iter()
                    .enumerate()
                    .any(|(i, &k)| i != far && ham(sc, self.code(k)) < d)
            {
                continue;
            }
            cur[far] = s;
            dists[far] = d;
        }
        cur
    }

    /// Neighbours for a node from candidates sorted by distance to it: a
    /// candidate is kept unless an already kept one is closer to it than the
    /// node is (links then point in different directions, which keeps
    /// clusters connected to each other).
    #[inline(always)]
    fn select(&self, sorted: &[(u32, u32)], cap: usize) -> Vec<u32> {
        let mut kept: Vec<u32> = Vec::with_capacity(cap);
        for &(d, c) in sorted {
            if kept.len() >= cap {
                break;
            }
            let cc = self.code(c);
            if kept.iter().all(|&k| ham(cc, self.code(k)) >= d) {
                kept.push(c);
            }
        }
        kept
    }

    #[inline(always)]
    fn dist(&self, q: &[u64], slot: u32) -> u32 {
        ham(q, self.code(slot))
    }

    /// Greedy descent on one upper level.
    #[inline(always)]
    fn greedy(&self, q: &[u64], mut cur: (u32, u32), level: usize) -> (u32, u32) {
        loop {
            let mut moved = false;
            for &n in self.links(cur.1, level) {
                let d = self.dist(q, n);
                if d < cur.0 {
                    cur = (d, n);
                    moved = true;
                }
            }
            if !moved {
                return cur;
            }
        }
    }

    /// Best-first search on `level` from `start` keeping `ef` results: live
    /// nodes only (free slots guide the walk but are not returned), never
    /// `skip`. Returns (distance, slot) pairs, unordered.
    #[inline(always)]
    fn walk(
        &mut self,
        q: &[u64],
        start: (u32, u32),
        ef: usize,
        level: usize,
        skip: Option<u32>,
    ) -> Vec<(u32, u32)> {
        let adding = skip.is_some();
        let mut seen = std::mem::take(if adding {
            &mut self.seen_add
        } else {
            &mut self.seen
        });
        let found = self.walk_with(&mut seen, q, start, ef, level, skip);
        if adding {
            self.seen_add = seen;
        } else {
            self.seen = seen;
        }
        found
    }

    /// `walk` with the caller's visited set (parallel insertions each bring
    /// their own).
    #[inline(always)]
    fn walk_with(
        &self,
        seen: &mut Visited,
        q: &[u64],
        start: (u32, u32),
        ef: usize,
        level: usize,
        skip: Option<u32>,
    ) -> Vec<(u32, u32)> {
        seen.clear(ef, self.slots());
        let skip = skip.unwrap_or(FREE);
        // (distance, slot) packed in one u64 so the heaps compare once.
        let key = |d: u32, s: u32| (u64::from(d) << 32) | u64::from(s);
        // Free slots are rare (an insertion reuses them at once), so the
        // check of a slot's id, a likely cache miss, runs only when some are.
        let returnable =
            |ids: &[u32], free: bool, s: u32| s != skip && (!free || ids[s as usize] != FREE);
        let any_free = !self.free.is_empty();
        let mut cands: BinaryHeap<Reverse<u64>> = BinaryHeap::with_capacity(ef * 4);
        let mut best: BinaryHeap<u64> = BinaryHeap::with_capacity(ef + 1);
        let (d, s) = start;
        seen.insert(s);
        cands.push(Reverse(key(d, s)));
        if returnable(&self.ids, any_free, s) {
            best.push(key(d, s));
        }
        let code_bytes = self.words * 8;
        let mut fresh: Vec<u32> = Vec::with_capacity(self.m0);
        while let Some(Reverse(top)) = cands.pop() {
            let (d, c) = ((top >> 32) as u32, top as u32);
            if best.len() >= ef && best.peek().is_some_and(|&w| d > (w >> 32) as u32) {
                break;
            }
            fresh.clear();
            let links = links_of(&self.links0, &self.degree0, &self.upper, self.m, c, level);
            for &n in links {
                if seen.insert(n) {
                    let at = n as usize * self.words;
                    prefetch(self.codes[at..].as_ptr() as *const u8, code_bytes);
                    fresh.push(n);
                }
            }
            for &n in &fresh {
                let dn = ham(q, self.code(n));
                let worst = best.peek().map_or(u32::MAX, |&w| (w >> 32) as u32);
                if best.len() < ef || dn < worst {
                    cands.push(Reverse(key(dn, n)));
                    if returnable(&self.ids, any_free, n) {
                        best.push(key(dn, n));
                        if best.len() > ef {
                            best.pop();
                        }
                    }
                }
            }
            if level == 0 {
                if let Some(&Reverse(next)) = cands.peek() {
                    let at = (next as u32) as usize * self.m0;
                    prefetch(self.links0[at..].as_ptr() as *const u8, self.m0 * 4);
                }
            }
        }
        best.into_iter()
            .map(|k| ((k >> 32) as u32, k as u32))
            .collect()
    }

    #[inline(always)]
    fn search_in(&mut self, q: &[f32], k: usize, min_score: f32) -> Vec<(u32, f32)> {
        let qc = self.coder.encode(q);
        let mut ep = (self.dist(&qc, self.entry), self.entry);
        for l in (1..=self.top).rev() {
            ep = self.greedy(&qc, ep, l);
        }
        let rerank = self.params.rerank.max(k);
        let ef = self.params.expansion_search.max(rerank);
        let mut found = self.walk(&qc, ep, ef, 0, None);
        found.sort_unstable();
        found.truncate(rerank);
        // Start every candidate's row load before scoring the first.
        for &(_, s) in &found {
            prefetch(self.row(s).as_ptr() as *const u8, self.dim * 2);
        }
        let kernels = Kernels::detect();
        let mut scored: Vec<(u32, f32)> = found
            .iter()
            .map(|&(_, s)| (self.ids[s as usize], kernels.dot_f16(q, self.row(s))))
            .filter(|&(_, score)| score >= min_score)
            .collect();
        scored.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        scored.truncate(k);
        scored
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "popcnt")]
    unsafe fn search_popcnt(&mut self, q: &[f32], k: usize, min_score: f32) -> Vec<(u32, f32)> {
        self.search_in(q, k, min_score)
    }

    /// Heap bytes held beyond what the live entries account for (slots of
    /// removed entries awaiting reuse, reserved capacity).
    pub fn slack_bytes(&self) -> usize {
        self.memory_bytes()
            .saturating_sub(self.len() * self.params.bytes_per_entry(self.dim))
    }
}

impl VectorIndex for HnswIndex {
    fn len(&self) -> usize {
        self.slot_of.len()
    }

    fn add(&mut self, id: u32, v: &[f32]) {
        debug_assert_eq!(v.len(), self.dim);
        // Ids are the store's slots, far below the free-slot marker.
        debug_assert_ne!(id, FREE);
        if self.slot_of.contains_key(&id) {
            self.remove(id);
        }
        self.insert(id, v);
    }

    fn remove(&mut self, id: u32) -> bool {
        let Some(s) = self.slot_of.remove(&id) else {
            return false;
        };
        self.ids[s as usize] = FREE;
        self.free.push(s);
        if self.slot_of.is_empty() {
            // Nothing left to guide: start over with no memory held.
            *self = HnswIndex::new(self.dim, self.params);
        }
        true
    }

    fn vector(&self, id: u32) -> Option<Vec<f32>> {
        let &s = self.slot_of.get(&id)?;
        Some(self.row(s).iter().map(|&h| f16_to_f32(h)).collect())
    }

    fn search(&mut self, q: &[f32], k: usize, min_score: f32) -> Vec<(u32, f32)> {
        if k == 0 || self.slot_of.is_empty() || self.entry == FREE {
            return Vec::new();
        }
        let k = k.min(self.slot_of.len());
        #[cfg(target_arch = "x86_64")]
        {
            if has_popcnt() {
                // SAFETY: the CPU has POPCNT.
                return unsafe { self.search_popcnt(q, k, min_score) };
            }
        }
        self.search_in(q, k, min_score)
    }

    fn memory_bytes(&self) -> usize {
        self.codes.bytes()
            + self.rows.capacity() * 2
            + self.links0.bytes()
            + self.degree0.capacity()
            + self.upper_bytes
            + self.levels.capacity()
            + self.ids.capacity() * 4
            + (self.seen.table.capacity() + self.seen_add.table.capacity()) * 4
            + self.free.capacity() * 4
            + self.slot_of.capacity() * SLOT_MAP_BYTES
    }

    fn bytes_per_entry(&self) -> usize {
        self.params.bytes_per_entry(self.dim)
    }
}

#[cfg(test)]
mod tests;
