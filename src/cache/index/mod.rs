//! Nearest-neighbour indexes over L2-normalised vectors (cosine = dot
//! product). Each partition owns one index, so a lookup never sees another
//! partition's vectors.

pub mod flat;
pub mod hnsw;
pub mod quant;

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

/// Partition size from which `index="auto"` switches to HNSW. Below it an
/// exact scan is as fast and exact.
pub const AUTO_HNSW_MIN: usize = 4096;
/// Size below which an auto HNSW partition returns to a flat index.
pub const AUTO_FLAT_MAX: usize = 1024;

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

/// Dot product of two equally long f32 slices: AVX2+FMA when the CPU has
/// them (checked once at run time, so wheels stay portable), otherwise a
/// portable loop the compiler vectorises with the baseline instruction set.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if has_avx2_fma() {
            // SAFETY: the CPU supports the features `dot_avx2` is compiled for.
            return unsafe { dot_avx2(a, b) };
        }
    }
    dot_portable(a, b)
}

#[cfg(target_arch = "x86_64")]
fn has_avx2_fma() -> bool {
    use std::sync::atomic::{AtomicU8, Ordering};
    static STATE: AtomicU8 = AtomicU8::new(0);
    match STATE.load(Ordering::Relaxed) {
        1 => true,
        2 => false,
        _ => {
            let yes = std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma");
            STATE.store(if yes { 1 } else { 2 }, Ordering::Relaxed);
            yes
        }
    }
}

/// The body of both dot products: sixteen independent accumulators over
/// contiguous f32, which the compiler turns into two or four SIMD registers.
macro_rules! dot_body {
    ($a:expr, $b:expr) => {{
        let n = $a.len().min($b.len());
        let (a, b) = (&$a[..n], &$b[..n]);
        let mut acc = [0f32; 16];
        let mut ca = a.chunks_exact(16);
        let mut cb = b.chunks_exact(16);
        for (x, y) in (&mut ca).zip(&mut cb) {
            for j in 0..16 {
                acc[j] += x[j] * y[j];
            }
        }
        let mut s = 0f32;
        for (x, y) in ca.remainder().iter().zip(cb.remainder()) {
            s += x * y;
        }
        let mut half = [0f32; 8];
        for j in 0..8 {
            half[j] = acc[j] + acc[j + 8];
        }
        s + (half[0] + half[4]) + (half[1] + half[5]) + (half[2] + half[6]) + (half[3] + half[7])
    }};
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let n = a.len().min(b.len());
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    // SAFETY: every load reads 8 floats at `i + 8k`, below `n` by the loop
    // bounds; unaligned loads are allowed.
    unsafe {
        while i + 32 <= n {
            for (k, lane) in acc.iter_mut().enumerate() {
                let x = _mm256_loadu_ps(pa.add(i + 8 * k));
                let y = _mm256_loadu_ps(pb.add(i + 8 * k));
                *lane = _mm256_fmadd_ps(x, y, *lane);
            }
            i += 32;
        }
        while i + 8 <= n {
            acc[0] = _mm256_fmadd_ps(
                _mm256_loadu_ps(pa.add(i)),
                _mm256_loadu_ps(pb.add(i)),
                acc[0],
            );
            i += 8;
        }
        let sum = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
        let mut lanes = [0f32; 8];
        _mm256_storeu_ps(lanes.as_mut_ptr(), sum);
        let mut s = lanes.iter().sum::<f32>();
        while i < n {
            s += *pa.add(i) * *pb.add(i);
            i += 1;
        }
        s
    }
}

fn dot_portable(a: &[f32], b: &[f32]) -> f32 {
    dot_body!(a, b)
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

    /// Under `Auto`, move to HNSW when large and back to flat when small.
    /// `ids` are the ids the index holds (the HNSW library keeps no key list).
    pub fn adapt<'a>(
        &mut self,
        kind: IndexKind,
        dim: usize,
        params: HnswParams,
        ids: impl Iterator<Item = &'a u32>,
    ) {
        if kind != IndexKind::Auto {
            return;
        }
        let len = self.len();
        let replacement = match self {
            Index::Flat(f) if len >= AUTO_HNSW_MIN => {
                let mut h = HnswIndex::new(dim, params);
                // In id order, so the same entries give the same graph.
                let mut ids: Vec<u32> = ids.copied().collect();
                ids.sort_unstable();
                for id in ids {
                    if let Some(v) = f.vector(id) {
                        h.add(id, &v);
                    }
                }
                Some(Index::Hnsw(Box::new(h)))
            }
            Index::Hnsw(h) if len <= AUTO_FLAT_MAX => {
                let mut f = FlatIndex::new(dim);
                for &id in ids {
                    if let Some(v) = h.vector(id) {
                        f.add(id, &v);
                    }
                }
                Some(Index::Flat(f))
            }
            _ => None,
        };
        if let Some(r) = replacement {
            *self = r;
        }
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn dot_matches_naive() {
        let a: Vec<f32> = (0..37).map(|i| i as f32 * 0.1).collect();
        let b: Vec<f32> = (0..37).map(|i| 1.0 - i as f32 * 0.05).collect();
        let naive: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        assert!((dot(&a, &b) - naive).abs() < 1e-3);
    }
}
