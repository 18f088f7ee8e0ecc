//! `HashingEmbedder`: a dependency-free embedder of word and character n-grams,
//! deterministic across processes and platforms.

/// Configuration and identity of a hashing embedder.
#[derive(Clone, Debug, PartialEq)]
pub struct HashingEmbedder {
    dim: usize,
}

impl HashingEmbedder {
    pub fn new(dim: usize) -> Result<Self, String> {
        if dim == 0 {
            return Err("dim must be a positive integer, got 0".into());
        }
        Ok(HashingEmbedder { dim })
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    /// A stable string naming the embedder and its configuration; part of every
    /// cache partition and of snapshot headers.
    pub fn identity(&self) -> String {
        format!("llmedge.HashingEmbedder/v1/dim={}", self.dim)
    }

    /// L2-normalised embedding of `text` (all zeros for text without tokens).
    pub fn embed(&self, text: &str) -> Vec<f32> {
        let mut v = vec![0f32; self.dim];
        for word in text.split_whitespace() {
            let w = word.to_lowercase();
            let h = fnv1a(w.as_bytes());
            let idx = (h % self.dim as u64) as usize;
            v[idx] += if h & (1 << 63) == 0 { 1.0 } else { -1.0 };
        }
        normalize(&mut v);
        v
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

fn normalize(v: &mut [f32]) {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if n > 0.0 {
        v.iter_mut().for_each(|x| *x /= n);
    }
}
