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

#[cfg(target_arch = "x86_64")]
use super::quant::has_popcnt;
use super::quant::{dot_f16, f16_to_f32, f32_to_f16, ham, prefetch, SignCoder};
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
            expansion_add: 200,
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

    fn slots(&self) -> usize {
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
            self.upper
                .insert(s, vec![0u32; level * (self.m + 1)].into_boxed_slice());
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

    /// Adds `to` to the links of `from` on `level`, pruning by the same rule
    /// as `select` when the list is full.
    #[inline(always)]
    fn add_link(&mut self, from: u32, to: u32, level: usize) {
        let cap = if level == 0 { self.m0 } else { self.m };
        let cur: Vec<u32> = self.links(from, level).to_vec();
        if cur.contains(&to) {
            return;
        }
        if cur.len() < cap {
            let mut next = cur;
            next.push(to);
            self.set_links(from, level, &next);
            return;
        }
        let q: Vec<u64> = self.code(from).to_vec();
        let mut cands: Vec<(u32, u32)> = cur
            .iter()
            .chain(std::iter::once(&to))
            .map(|&n| (self.dist(&q, n), n))
            .collect();
        cands.sort_unstable();
        let chosen = self.select(&cands, cap);
        self.set_links(from, level, &chosen);
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
        if adding {
            self.seen_add = seen;
        } else {
            self.seen = seen;
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
        let mut scored: Vec<(u32, f32)> = found
            .iter()
            .map(|&(_, s)| (self.ids[s as usize], dot_f16(q, self.row(s))))
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

/// The set of slots a walk has visited: open addressing over a table sized
/// for the walk, not for the index (a search at the default `ef` visits about
/// 1,400 slots and its 16 KB table stays in the L1 cache; a tag byte per slot
/// was measured no faster at 100,000 entries and costs a byte per entry).
#[derive(Default)]
struct Visited {
    /// Slot + 1 per cell, 0 when empty; a power of two long.
    table: Vec<u32>,
    len: usize,
}

impl Visited {
    /// Empties the set, sized for a walk keeping `ef` results in a graph of
    /// `slots` slots (it grows if a walk visits more).
    fn clear(&mut self, ef: usize, slots: usize) {
        let want = (ef * 64)
            .min(slots * 4)
            .next_power_of_two()
            .clamp(16, 1 << 16);
        if self.table.len() != want {
            self.table = vec![0; want];
        } else {
            self.table.iter_mut().for_each(|c| *c = 0);
        }
        self.len = 0;
    }

    /// Adds `slot`; false when it was already there.
    #[inline(always)]
    fn insert(&mut self, slot: u32) -> bool {
        if 2 * (self.len + 1) > self.table.len() {
            self.grow();
        }
        let mask = self.table.len() - 1;
        let key = slot.wrapping_add(1);
        let bits = self.table.len().trailing_zeros();
        let mut i = (slot.wrapping_mul(0x9E37_79B9) >> (32 - bits)) as usize;
        loop {
            let c = self.table[i];
            if c == key {
                return false;
            }
            if c == 0 {
                self.table[i] = key;
                self.len += 1;
                return true;
            }
            i = (i + 1) & mask;
        }
    }

    #[cold]
    fn grow(&mut self) {
        let bigger = vec![0; (self.table.len() * 2).max(16)];
        let old = std::mem::replace(&mut self.table, bigger);
        self.len = 0;
        for key in old.into_iter().filter(|&k| k != 0) {
            self.insert(key - 1);
        }
    }
}

/// The links of `slot` on `level` in `links0` / `upper` (see `HnswIndex`).
#[inline(always)]
fn links_of<'a>(
    links0: &'a [u32],
    degree0: &[u8],
    upper: &'a HashMap<u32, Box<[u32]>>,
    m: usize,
    slot: u32,
    level: usize,
) -> &'a [u32] {
    if level == 0 {
        let at = slot as usize * 2 * m;
        return &links0[at..at + usize::from(degree0[slot as usize])];
    }
    let Some(u) = upper.get(&slot) else {
        return &[];
    };
    let at = (level - 1) * (m + 1);
    &u[at + 1..at + 1 + u[at] as usize]
}

/// Integer types `LineVec` holds (any bit pattern is a valid value).
trait Plain: Copy {}
impl Plain for u32 {}
impl Plain for u64 {}

/// A growable array whose first element starts a cache line, so that a
/// 64-byte sign code or a 128-byte list of links spans exactly one or two
/// lines. (The allocator's large blocks start 16 bytes into a line, which
/// made every code two loads, the second one not prefetched.)
///
/// The elements live in a `Vec<u64>` from a word offset that starts a line,
/// rather than in a type aligned to 64: the allocator cannot grow
/// over-aligned blocks in place, and the copies it made instead raised its
/// threshold for returning freed memory to the system (resident memory
/// grew by about 1 KB per entry at 100,000 entries). Large blocks keep
/// their offset when they grow; the data moves when the offset changes.
struct LineVec<T> {
    /// `off` words of padding, then the elements' words.
    buf: Vec<u64>,
    off: usize,
    len: usize,
    _of: std::marker::PhantomData<T>,
}

/// Words a line holds.
const LINE_WORDS: usize = 8;

impl<T: Plain> LineVec<T> {
    fn new() -> Self {
        LineVec {
            buf: Vec::new(),
            off: 0,
            len: 0,
            _of: std::marker::PhantomData,
        }
    }

    /// Words holding `n` elements.
    fn words(n: usize) -> usize {
        (n * std::mem::size_of::<T>()).div_ceil(8)
    }

    /// Appends `n` zeros.
    fn grow_zeroed(&mut self, n: usize) {
        self.reserve_exact(n);
        self.len += n;
        self.buf.resize(self.off + Self::words(self.len), 0);
    }

    /// Room for `more` elements beyond `len` without reallocating.
    fn reserve_exact(&mut self, more: usize) {
        // Any offset (at most LINE_WORDS - 1) fits in what is reserved.
        let want = Self::words(self.len + more) + LINE_WORDS - 1;
        if self.buf.capacity() < want {
            self.buf.reserve_exact(want - self.buf.len());
            self.realign();
        }
    }

    /// Moves the elements to where a line starts in the current block.
    fn realign(&mut self) {
        let addr = self.buf.as_ptr() as usize;
        let need = (64 - addr % 64) % 64 / 8;
        if need == self.off {
            return;
        }
        let data = self.buf.len() - self.off;
        // Within the capacity reserved: no reallocation, the address holds.
        self.buf.resize(self.buf.len().max(need + data), 0);
        self.buf.copy_within(self.off..self.off + data, need);
        self.buf.truncate(need + data);
        self.off = need;
    }

    /// Bytes allocated.
    fn bytes(&self) -> usize {
        self.buf.capacity() * 8
    }
}

impl<T: Plain> std::ops::Deref for LineVec<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        debug_assert!(
            self.len == 0 || (self.buf.as_ptr().wrapping_add(self.off) as usize).is_multiple_of(64)
        );
        // SAFETY: `buf[off..]` holds `words(len)` words, at least `len`
        // elements of T, aligned (8 >= align_of::<T>()); T is an integer,
        // valid for any bits; the borrow follows `self`.
        unsafe { std::slice::from_raw_parts(self.buf.as_ptr().add(self.off).cast::<T>(), self.len) }
    }
}

impl<T: Plain> std::ops::DerefMut for LineVec<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        // SAFETY: as in `deref`, borrowed mutably through `self`.
        unsafe {
            std::slice::from_raw_parts_mut(
                self.buf.as_mut_ptr().add(self.off).cast::<T>(),
                self.len,
            )
        }
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
            + self
                .upper
                .values()
                .map(|u| u.len() * 4 + UPPER_MAP_BYTES)
                .sum::<usize>()
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
        let mut h = built(&stored, 96);
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
        // SEED=k inserts in another order (a different graph).
        let seed: usize = std::env::var("SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        for j in 0..n {
            let i = if seed == 0 {
                j
            } else {
                (j * 7919 + seed * 104_729) % n
            };
            h.add(i as u32, &stored[i]);
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
                let exact = crate::cache::index::dot(q, &pool[row.unwrap_or(0)]);
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
                .filter(|q| {
                    h.search(q, 1, -1.0).first().map(|x| x.0) == Some(exact_best(&stored, q))
                })
                .count();
            assert!(hits >= 17, "dim {dim}: {hits}/20");
            assert_eq!(h.search(&qs[0], usize::MAX, -1.0).len(), 400);
        }
    }
}
