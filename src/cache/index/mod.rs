//! Nearest-neighbour indexes over L2-normalised vectors (cosine = dot
//! product). Each partition owns one index, so a lookup never sees another
//! partition's vectors.

pub mod flat;
pub mod hnsw;
pub mod quant;
pub mod simd;

pub use flat::FlatIndex;
pub use hnsw::{HnswIndex, HnswParams};

/// Which index a partition uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IndexKind {
    /// Flat while small, HNSW from [`AUTO_HNSW_MIN`] entries on.
    Auto,
    Flat,
    Hnsw,
}

impl IndexKind {
    pub const ALLOWED: &'static str = "\"auto\", \"flat\", \"hnsw\"";

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "auto" => Some(IndexKind::Auto),
            "flat" => Some(IndexKind::Flat),
            "hnsw" => Some(IndexKind::Hnsw),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            IndexKind::Auto => "auto",
            IndexKind::Flat => "flat",
            IndexKind::Hnsw => "hnsw",
        }
    }
}

/// Partition size from which `index="auto"` moves to HNSW: the graph is
/// built off the cache lock (`cache::rebuild`) while the exact scan keeps
/// answering. At this size the scan of 384-dim f32 rows costs about what a
/// graph lookup does; above it the scan is memory-bound (about 110 us at
/// 3,000 entries against 30 us for the graph).
pub const AUTO_HNSW_MIN: usize = 1024;
/// Size at or below which an auto HNSW partition returns to a flat index
/// (a copy of at most this many vectors, done under the lock).
pub const AUTO_FLAT_MAX: usize = 256;
/// Slots an HNSW index must have before it is compacted.
const COMPACT_MIN_SLOTS: usize = 256;

/// The operations the store needs from an index. Ids are the store's entry
/// slots.
pub trait VectorIndex {
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    fn add(&mut self, id: u32, v: &[f32]);
    fn remove(&mut self, id: u32) -> bool;
    /// A copy of the vector stored for `id`.
    fn vector(&self, id: u32) -> Option<Vec<f32>>;
    /// Up to `k` ids with similarity >= `min_score`, best first.
    fn search(&mut self, q: &[f32], k: usize, min_score: f32) -> Vec<(u32, f32)>;
    /// Heap bytes held, including vectors and any slack kept for reuse.
    fn memory_bytes(&self) -> usize;
    /// Bytes this index spends per entry (vector and links), for accounting.
    fn bytes_per_entry(&self) -> usize;
}

/// A partition's index: flat or HNSW, switched by size under `Auto`.
pub enum Index {
    Flat(FlatIndex),
    Hnsw(Box<HnswIndex>),
}

impl Index {
    pub fn new(kind: IndexKind, dim: usize, params: HnswParams) -> Self {
        match kind {
            IndexKind::Hnsw => Index::Hnsw(Box::new(HnswIndex::new(dim, params))),
            IndexKind::Flat | IndexKind::Auto => Index::Flat(FlatIndex::new(dim)),
        }
    }

    fn inner(&self) -> &dyn VectorIndex {
        match self {
            Index::Flat(f) => f,
            Index::Hnsw(h) => h.as_ref(),
        }
    }

    fn inner_mut(&mut self) -> &mut dyn VectorIndex {
        match self {
            Index::Flat(f) => f,
            Index::Hnsw(h) => h.as_mut(),
        }
    }

    pub fn kind_name(&self) -> &'static str {
        match self {
            Index::Flat(_) => "flat",
            Index::Hnsw(_) => "hnsw",
        }
    }

    /// Whether this index should be rebuilt as an HNSW graph off the lock:
    /// an auto flat index that reached [`AUTO_HNSW_MIN`], or a graph whose
    /// slots are mostly those of removed entries (compaction).
    pub fn wants_graph(&self, kind: IndexKind) -> bool {
        match self {
            Index::Flat(f) => kind == IndexKind::Auto && f.len() >= AUTO_HNSW_MIN,
            Index::Hnsw(h) => h.slots() >= COMPACT_MIN_SLOTS && h.slots() > 2 * h.len(),
        }
    }

    /// Under `Auto`, back to a flat index once the graph holds at most
    /// [`AUTO_FLAT_MAX`] entries; `ids` are the ids it holds. Whether it
    /// changed.
    pub fn shrink<'a>(
        &mut self,
        kind: IndexKind,
        dim: usize,
        ids: impl Iterator<Item = &'a u32>,
    ) -> bool {
        let Index::Hnsw(h) = self else {
            return false;
        };
        if kind != IndexKind::Auto || h.len() > AUTO_FLAT_MAX {
            return false;
        }
        let mut f = FlatIndex::new(dim);
        for &id in ids {
            if let Some(v) = h.vector(id) {
                f.add(id, &v);
            }
        }
        *self = Index::Flat(f);
        true
    }
}

impl VectorIndex for Index {
    fn len(&self) -> usize {
        self.inner().len()
    }
    fn add(&mut self, id: u32, v: &[f32]) {
        self.inner_mut().add(id, v)
    }
    fn remove(&mut self, id: u32) -> bool {
        self.inner_mut().remove(id)
    }
    fn vector(&self, id: u32) -> Option<Vec<f32>> {
        self.inner().vector(id)
    }
    fn search(&mut self, q: &[f32], k: usize, min_score: f32) -> Vec<(u32, f32)> {
        self.inner_mut().search(q, k, min_score)
    }
    fn memory_bytes(&self) -> usize {
        self.inner().memory_bytes()
    }
    fn bytes_per_entry(&self) -> usize {
        self.inner().bytes_per_entry()
    }
}
