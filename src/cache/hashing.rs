//! `HashingEmbedder`: a dependency-free embedder of word and character n-grams,
//! deterministic across processes and platforms.
//!
//! Text is lowercased and split into words (runs of alphanumeric characters;
//! apostrophes inside words are dropped, every other character separates).
//! Features are word n-grams (default unigrams and bigrams) and character
//! n-grams (default 3 to 5) of each word padded with `<` and `>`. Each feature
//! is hashed with 64-bit FNV-1a (fixed constants, no seed) and a splitmix64
//! finaliser; the hash picks a bucket and a sign (signed feature hashing keeps
//! collisions unbiased). A feature's weight is `1 + ln(count)` (sublinear term
//! frequency); the word and character groups are each scaled to unit norm and
//! then weighted equally, so long words do not drown the word features. The
//! result is L2-normalised.
//!
//! Text without any word character embeds to the all-zero vector (there is no
//! direction to give it); callers that search by cosine must treat it apart.

use rayon::prelude::*;

/// The version of the embedding function: bump it whenever the features, the
/// hash or the weighting change, since it is part of `identity()` and so of
/// every cache partition and snapshot.
const VERSION: u32 = 3;

/// The largest accepted dimension.
pub const MAX_DIM: usize = 1 << 16;
/// The largest accepted n for word and character n-grams.
pub const MAX_NGRAM: usize = 16;

/// Batches at least this large are embedded in parallel.
const PARALLEL_BATCH: usize = 32;

/// Configuration and identity of a hashing embedder.
#[derive(Clone, Debug, PartialEq)]
pub struct HashingEmbedder {
    dim: usize,
    word_ngrams: Option<(usize, usize)>,
    char_ngrams: Option<(usize, usize)>,
}

impl HashingEmbedder {
    /// The default configuration: word 1-2 grams and character 3-5 grams.
    pub fn new(dim: usize) -> Result<Self, String> {
        Self::new_with(dim, Some((1, 2)), Some((3, 5)))
    }

    /// `None` disables a feature group; at least one must be enabled.
    pub fn new_with(
        dim: usize,
        word_ngrams: Option<(usize, usize)>,
        char_ngrams: Option<(usize, usize)>,
    ) -> Result<Self, String> {
        if dim == 0 || dim > MAX_DIM {
            return Err(format!(
                "dim must be an integer in 1..={MAX_DIM}, got {dim}"
            ));
        }
        for (name, range) in [("word_ngrams", word_ngrams), ("char_ngrams", char_ngrams)] {
            if let Some((lo, hi)) = range {
                if lo == 0 || hi < lo || hi > MAX_NGRAM {
                    return Err(format!(
                        "{name} must be a (min, max) pair with 1 <= min <= max <= {MAX_NGRAM}, \
                         got ({lo}, {hi})"
                    ));
                }
            }
        }
        if word_ngrams.is_none() && char_ngrams.is_none() {
            return Err("word_ngrams and char_ngrams cannot both be None".into());
        }
        Ok(HashingEmbedder {
            dim,
            word_ngrams,
            char_ngrams,
        })
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    pub fn word_ngrams(&self) -> Option<(usize, usize)> {
        self.word_ngrams
    }

    pub fn char_ngrams(&self) -> Option<(usize, usize)> {
        self.char_ngrams
    }

    /// A stable string naming the embedder, its version and configuration;
    /// part of every cache partition and of snapshot headers.
    pub fn identity(&self) -> String {
        let range = |r: Option<(usize, usize)>| match r {
            Some((lo, hi)) => format!("{lo}-{hi}"),
            None => "off".to_string(),
        };
        format!(
            "llmedge.HashingEmbedder/v{VERSION}/dim={}/words={}/chars={}",
            self.dim,
            range(self.word_ngrams),
            range(self.char_ngrams)
        )
    }

    /// L2-normalised embedding of `text`; all zeros for text without words.
    pub fn embed(&self, text: &str) -> Vec<f32> {
        let words = words(text);
        let mut v = vec![0f32; self.dim];
        let mut feats: Vec<u64> = Vec::new();
        if let Some((lo, hi)) = self.word_ngrams {
            word_features(&words, lo, hi, &mut feats);
            self.accumulate(&mut feats, &mut v);
        }
        if let Some((lo, hi)) = self.char_ngrams {
            feats.clear();
            char_features(&words, lo, hi, &mut feats);
            self.accumulate(&mut feats, &mut v);
        }
        normalize(&mut v);
        v
    }

    /// Embeddings of many texts, in order; large batches run in parallel.
    pub fn embed_batch(&self, texts: &[&str]) -> Vec<Vec<f32>> {
        if texts.len() >= PARALLEL_BATCH {
            texts.par_iter().map(|t| self.embed(t)).collect()
        } else {
            texts.iter().map(|t| self.embed(t)).collect()
        }
    }

    /// Adds one feature group, scaled to unit norm, to `v`. Features are
    /// sorted first so that the summation order (and so every bit of the
    /// result) depends on the text alone.
    fn accumulate(&self, feats: &mut [u64], v: &mut [f32]) {
        if feats.is_empty() {
            return;
        }
        feats.sort_unstable();
        let mut weighted: Vec<(u64, f32)> = Vec::with_capacity(feats.len());
        let mut i = 0;
        while i < feats.len() {
            let mut j = i + 1;
            while j < feats.len() && feats[j] == feats[i] {
                j += 1;
            }
            // computed in f64 and rounded: the same f32 whatever the platform's libm
            weighted.push((feats[i], (1.0 + ((j - i) as f64).ln()) as f32));
            i = j;
        }
        let norm = weighted.iter().map(|(_, w)| w * w).sum::<f32>().sqrt();
        for (h, w) in weighted {
            let m = mix(h);
            let idx = ((u128::from(m) * self.dim as u128) >> 64) as usize;
            let sign = if m & 1 == 0 { 1.0 } else { -1.0 };
            v[idx] += sign * w / norm;
        }
    }
}

/// Lowercased words: runs of alphanumeric characters; apostrophes inside a
/// word are dropped ("don't" -> "dont"), any other character separates.
fn words(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_alphanumeric() {
            cur.extend(c.to_lowercase());
        } else if matches!(c, '\'' | '\u{2019}')
            && !cur.is_empty()
            && chars.peek().is_some_and(|n| n.is_alphanumeric())
        {
            continue;
        } else if !cur.is_empty() {
            out.push(std::mem::take(&mut cur));
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

const WORD_TAG: u8 = 1;
const CHAR_TAG: u8 = 2;
const SEP: u8 = 0x1f;

fn word_features(words: &[String], lo: usize, hi: usize, out: &mut Vec<u64>) {
    for n in lo..=hi {
        if n > words.len() {
            break;
        }
        for gram in words.windows(n) {
            let mut h = Fnv::new();
            h.byte(WORD_TAG);
            h.byte(n as u8);
            for (k, w) in gram.iter().enumerate() {
                if k > 0 {
                    h.byte(SEP);
                }
                h.bytes(w.as_bytes());
            }
            out.push(h.finish());
        }
    }
}

fn char_features(words: &[String], lo: usize, hi: usize, out: &mut Vec<u64>) {
    let mut padded: Vec<char> = Vec::new();
    let mut buf = [0u8; 4];
    for w in words {
        padded.clear();
        padded.push('<');
        padded.extend(w.chars());
        padded.push('>');
        // one running hash per start position, emitted at each length in
        // lo..=hi: the n-grams starting at a position share their prefix
        for start in 0..padded.len() {
            let mut h = Fnv::new();
            h.byte(CHAR_TAG);
            for (k, c) in padded[start..].iter().take(hi).enumerate() {
                h.bytes(c.encode_utf8(&mut buf).as_bytes());
                if k + 1 >= lo {
                    out.push(h.finish());
                }
            }
        }
    }
}

/// 64-bit FNV-1a: fixed constants, so the same on every platform and process.
struct Fnv(u64);

impl Fnv {
    fn new() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    fn byte(&mut self, b: u8) {
        self.0 ^= u64::from(b);
        self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
    }
    fn bytes(&mut self, bs: &[u8]) {
        for b in bs {
            self.byte(*b);
        }
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

/// splitmix64's finaliser: spreads FNV's weak low bits over the whole word.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn normalize(v: &mut [f32]) {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if n > 0.0 {
        v.iter_mut().for_each(|x| *x /= n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cos(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }

    #[test]
    fn validates_config() {
        assert!(HashingEmbedder::new(0)
            .expect_err("dim 0")
            .contains("got 0"));
        assert!(HashingEmbedder::new(MAX_DIM + 1).is_err());
        assert!(HashingEmbedder::new_with(8, Some((2, 1)), None).is_err());
        assert!(HashingEmbedder::new_with(8, None, None).is_err());
        assert!(HashingEmbedder::new_with(8, Some((0, 1)), None).is_err());
    }

    #[test]
    fn normalised_and_deterministic() {
        let e = HashingEmbedder::new(384).expect("valid");
        let v = e.embed("How do I reset my password?");
        assert_eq!(v.len(), 384);
        let n: f32 = v.iter().map(|x| x * x).sum();
        assert!((n - 1.0).abs() < 1e-5);
        assert_eq!(v, e.embed("How do I reset my password?"));
        assert_eq!(e.embed("  ...  "), vec![0.0; 384]);
        assert_eq!(e.embed(""), vec![0.0; 384]);
    }

    #[test]
    fn similar_texts_score_higher() {
        let e = HashingEmbedder::new(384).expect("valid");
        let a = e.embed("How do I reset my password?");
        let b = e.embed("how can I reset my password");
        let c = e.embed("What is the boiling point of water?");
        assert!(cos(&a, &b) > 0.6);
        assert!(cos(&a, &c) < 0.3);
        // case, punctuation and whitespace do not matter
        assert_eq!(a, e.embed("how   do i RESET my password"));
    }

    #[test]
    fn batch_matches_single() {
        let e = HashingEmbedder::new(64).expect("valid");
        let texts: Vec<String> = (0..100)
            .map(|i| format!("text number {i} é 東京"))
            .collect();
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let batch = e.embed_batch(&refs);
        for (t, v) in refs.iter().zip(&batch) {
            assert_eq!(&e.embed(t), v);
        }
    }

    #[test]
    fn identity_names_the_config() {
        let a = HashingEmbedder::new(384).expect("valid").identity();
        let b = HashingEmbedder::new_with(384, Some((1, 1)), Some((3, 5)))
            .expect("valid")
            .identity();
        assert_ne!(a, b);
        assert!(a.contains("dim=384") && a.contains("v3"));
    }
}
