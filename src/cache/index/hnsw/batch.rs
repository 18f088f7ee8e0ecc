//! Inserting many entries at once on all cores.
//!
//! An insertion spends nearly all its time walking the graph for the new
//! node's neighbours, which only reads the graph. So a batch of new nodes
//! first takes its slots (codes and rows written, no links yet), then every
//! node of the batch walks the graph in parallel; a node cannot reach its
//! batch-mates that way (nothing links to them yet), so each also compares
//! itself with all of them directly. The links are then written in order:
//! each node's own lists, then the links back to it, pruned by the same rule
//! as one insertion, each list changed once whatever the number of new nodes
//! that join it. Batches are a fraction of the graph (an eighth, at most
//! [`MAX_BATCH`]), so a node misses little by not seeing its mates' links;
//! below [`SEQUENTIAL_BELOW`] entries nodes go in one by one.
//!
//! The result depends only on the entries and their order, not on the
//! number of threads.

use rayon::prelude::*;

use super::memory::Visited;
use super::{HnswIndex, FREE};
use crate::cache::index::quant::{f32_to_f16, ham};
use crate::cache::index::VectorIndex;

/// Graph size below which entries are inserted one by one.
const SEQUENTIAL_BELOW: usize = 1024;
/// Largest batch of nodes linked together.
const MAX_BATCH: usize = 2048;

/// The links one new node chose: (level, neighbours) from its top level down.
type Chosen = Vec<(usize, Vec<u32>)>;

impl HnswIndex {
    /// Adds every `(id, vector)` (an id already present gets the new vector;
    /// of an id given twice the last vector stays), using all cores once the
    /// graph has [`SEQUENTIAL_BELOW`] entries.
    pub fn add_many(&mut self, items: &[(u32, Vec<f32>)]) {
        let mut i = 0;
        while i < items.len() {
            let batch = if self.len() < SEQUENTIAL_BELOW {
                1
            } else {
                (self.len() / 8).min(MAX_BATCH)
            };
            let end = (i + batch).min(items.len());
            if end - i == 1 {
                let (id, v) = &items[i];
                self.add(*id, v);
            } else {
                self.insert_batch(&items[i..end]);
            }
            i = end;
        }
    }

    fn insert_batch(&mut self, items: &[(u32, Vec<f32>)]) {
        // The last of an id's vectors wins; ids already present leave first.
        let mut last: std::collections::HashMap<u32, usize> =
            std::collections::HashMap::with_capacity(items.len());
        for (k, (id, _)) in items.iter().enumerate() {
            last.insert(*id, k);
        }
        let items: Vec<&(u32, Vec<f32>)> = items
            .iter()
            .enumerate()
            .filter(|(k, (id, _))| last.get(id) == Some(k))
            .map(|(_, it)| it)
            .collect();
        for (id, _) in &items {
            self.remove(*id);
        }
        if self.entry == FREE || self.len() == 0 {
            for (id, v) in items {
                self.add(*id, v);
            }
            return;
        }
        let coder = &self.coder;
        let codes: Vec<Vec<u64>> = items.par_iter().map(|(_, v)| coder.encode(v)).collect();
        let mut slots = Vec::with_capacity(items.len());
        for ((id, v), code) in items.iter().zip(&codes) {
            let s = self.take_slot();
            let at = s as usize * self.words;
            self.codes[at..at + self.words].copy_from_slice(code);
            let at = s as usize * self.dim;
            for (dst, &x) in self.rows[at..at + self.dim].iter_mut().zip(v) {
                *dst = f32_to_f16(x);
            }
            self.ids[s as usize] = *id;
            self.slot_of.insert(*id, s);
            slots.push(s);
        }
        let chosen: Vec<Chosen> = {
            let this = &*self;
            slots
                .par_iter()
                .map_init(Visited::default, |seen, &s| {
                    this.neighbours(seen, s, &slots)
                })
                .collect()
        };
        for (&s, lists) in slots.iter().zip(&chosen) {
            for (level, to) in lists {
                self.set_links(s, *level, to);
            }
        }
        // Links back: (target, level, new node), each target's list
        // recomputed once.
        let mut back: Vec<(u32, usize, u32)> = slots
            .iter()
            .zip(&chosen)
            .flat_map(|(&s, lists)| {
                lists
                    .iter()
                    .flat_map(move |(l, to)| to.iter().map(move |&n| (n, *l, s)))
            })
            .collect();
        back.sort_unstable();
        let groups: Vec<&[(u32, usize, u32)]> =
            back.chunk_by(|a, b| a.0 == b.0 && a.1 == b.1).collect();
        let lists: Vec<(u32, usize, Vec<u32>)> = {
            let this = &*self;
            groups
                .par_iter()
                .map(|g| {
                    let (n, l) = (g[0].0, g[0].1);
                    (n, l, this.joined(n, l, g.iter().map(|x| x.2)))
                })
                .collect()
        };
        for (n, l, list) in lists {
            self.set_links(n, l, &list);
        }
        for &s in &slots {
            let level = self.levels[s as usize] as usize;
            if level > self.top {
                self.entry = s;
                self.top = level;
            }
        }
    }

    /// The neighbours of batch node `s` on each of its levels: the graph's
    /// (a walk from the entry point) and its batch-mates'.
    fn neighbours(&self, seen: &mut Visited, s: u32, mates: &[u32]) -> Chosen {
        let level = self.levels[s as usize] as usize;
        let q: Vec<u64> = self.code(s).to_vec();
        let mut ep = (self.dist(&q, self.entry), self.entry);
        for l in (level + 1..=self.top).rev() {
            ep = self.greedy(&q, ep, l);
        }
        let ef = self.params.expansion_add.max(self.m0);
        let mut out = Vec::with_capacity(level + 1);
        for l in (0..=level).rev() {
            let mut found = if l <= self.top {
                self.walk_with(seen, &q, ep, ef, l, Some(s))
            } else {
                Vec::new()
            };
            // The next level's walk starts from the graph's best (a mate is
            // not linked in yet).
            if let Some(&best) = found.iter().min() {
                ep = best;
            }
            let mut near: Vec<(u32, u32)> = mates
                .iter()
                .filter(|&&m| m != s && self.levels[m as usize] as usize >= l)
                .map(|&m| (ham(&q, self.code(m)), m))
                .collect();
            // Only the best `ef` of all candidates are offered to `select`,
            // as for one insertion: selecting from all of a large batch cost
            // more than the walk.
            if near.len() > ef {
                near.select_nth_unstable(ef);
                near.truncate(ef);
            }
            found.extend(near);
            found.sort_unstable();
            found.dedup_by_key(|x| x.1);
            found.truncate(ef);
            let cap = if l == 0 { self.m0 } else { self.m };
            out.push((l, self.select(&found, cap)));
        }
        out
    }
}
