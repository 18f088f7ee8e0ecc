//! Compact vector forms for the HNSW index: half-precision rows for the exact
//! re-rank, and sign codes (random-hyperplane hashes) whose Hamming distance
//! estimates the angle between two vectors, for walking the graph.
//!
//! A search reads one sign code per distance: 64 bytes for a 384-dim vector
//! instead of its 1,536 f32 bytes, so the graph walk touches one cache line
//! per node and the codes of 100,000 entries (6 MB) stay mostly in cache.

/// f32 to IEEE 754 binary16 bits, rounding to nearest even; overflow becomes
/// infinity, tiny values become subnormals or zero.
pub fn f32_to_f16(x: f32) -> u16 {
    let b = x.to_bits();
    let sign = ((b >> 16) & 0x8000) as u16;
    let exp = ((b >> 23) & 0xff) as i32;
    let man = b & 0x007f_ffff;
    if exp == 0xff {
        // Inf or NaN (keep NaN quiet and non-zero).
        return sign | 0x7c00 | if man != 0 { 0x0200 } else { 0 };
    }
    let e = exp - 127 + 15;
    if e >= 0x1f {
        return sign | 0x7c00;
    }
    if e <= 0 {
        if e < -10 {
            return sign;
        }
        // Subnormal: shift the mantissa with its implicit bit.
        let m = man | 0x0080_0000;
        let shift = (14 - e) as u32;
        let half = m >> shift;
        let rem = m & ((1 << shift) - 1);
        let mid = 1 << (shift - 1);
        let round = u32::from(rem > mid || (rem == mid && (half & 1) == 1));
        return sign | (half + round) as u16;
    }
    let half = ((e as u32) << 10) | (man >> 13);
    let rem = man & 0x1fff;
    let round = u32::from(rem > 0x1000 || (rem == 0x1000 && (half & 1) == 1));
    // A carry out of the mantissa correctly bumps the exponent (up to Inf).
    sign | (half + round) as u16
}

/// IEEE 754 binary16 bits to f32 (exact).
pub fn f16_to_f32(h: u16) -> f32 {
    let sign = u32::from(h & 0x8000) << 16;
    let exp = u32::from((h >> 10) & 0x1f);
    let man = u32::from(h & 0x03ff);
    let bits = match (exp, man) {
        (0, 0) => sign,
        (0, _) => {
            // Subnormal: normalise.
            let mut e = 127 - 15 + 1;
            let mut m = man;
            while m & 0x0400 == 0 {
                m <<= 1;
                e -= 1;
            }
            sign | ((e as u32) << 23) | ((m & 0x03ff) << 13)
        }
        (0x1f, _) => sign | 0x7f80_0000 | (man << 13),
        _ => sign | ((exp + 127 - 15) << 23) | (man << 13),
    };
    f32::from_bits(bits)
}

/// Random-hyperplane sign codes. The vector is zero-padded to a power of two
/// and rotated by three rounds of random sign flips and a Walsh-Hadamard
/// transform (a fast stand-in for a random rotation); bit `i` of the code is
/// the sign of coordinate `i`. For two vectors at angle `t`, each bit differs
/// with probability `t / pi`, so Hamming distance orders candidates by angle
/// whatever the embedding's distribution (a mean offset or unequal
/// coordinate scales do not bias it).
#[derive(Clone, Debug)]
pub struct SignCoder {
    dim: usize,
    padded: usize,
    bits: usize,
    /// Three rounds of `padded` signs (+1.0 or -1.0), from a fixed seed so
    /// codes are the same in every process.
    flips: Vec<f32>,
}

const ROUNDS: usize = 3;
const MIN_BITS: usize = 256;
const MAX_BITS: usize = 1024;

impl SignCoder {
    pub fn new(dim: usize) -> Self {
        let padded = dim.max(1).next_power_of_two().max(MIN_BITS);
        let bits = Self::bits_for(dim);
        let mut s: u64 = 0x9E37_79B9_7F4A_7C15;
        let flips = (0..ROUNDS * padded)
            .map(|_| {
                // xorshift64*
                s ^= s >> 12;
                s ^= s << 25;
                s ^= s >> 27;
                if s.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 63 == 1 {
                    1.0
                } else {
                    -1.0
                }
            })
            .collect();
        SignCoder {
            dim,
            padded,
            bits,
            flips,
        }
    }

    /// Code length in bits (a multiple of 64).
    pub fn bits(&self) -> usize {
        self.bits
    }

    /// Code length in bits for `dim`-dimensional vectors.
    pub fn bits_for(dim: usize) -> usize {
        dim.max(1).next_power_of_two().clamp(MIN_BITS, MAX_BITS)
    }

    /// The code of `v` (`dim` floats): `bits()` bits in `bits() / 64` words.
    pub fn encode(&self, v: &[f32]) -> Vec<u64> {
        let mut x = vec![0f32; self.padded];
        let n = self.dim.min(v.len());
        x[..n].copy_from_slice(&v[..n]);
        for r in 0..ROUNDS {
            let f = &self.flips[r * self.padded..(r + 1) * self.padded];
            x.iter_mut().zip(f).for_each(|(a, s)| *a *= s);
            fwht(&mut x);
        }
        x[..self.bits]
            .chunks_exact(64)
            .map(|c| {
                c.iter()
                    .enumerate()
                    .fold(0u64, |w, (j, &y)| w | (u64::from(y > 0.0) << j))
            })
            .collect()
    }
}

/// In-place unnormalised Walsh-Hadamard transform (length a power of two).
fn fwht(x: &mut [f32]) {
    let n = x.len();
    let mut h = 1;
    if n % 8 == 0 {
        // The first three butterfly stages within each group of eight, in
        // registers (as separate passes their inner loops are too short to
        // vectorise); same operations in the same order.
        for g in x.chunks_exact_mut(8) {
            let mut v = [0f32; 8];
            v.copy_from_slice(g);
            for step in [1, 2, 4] {
                for i in 0..8 {
                    if i & step == 0 {
                        let (a, b) = (v[i], v[i + step]);
                        v[i] = a + b;
                        v[i + step] = a - b;
                    }
                }
            }
            g.copy_from_slice(&v);
        }
        h = 8;
    }
    while h < n {
        for block in x.chunks_exact_mut(2 * h) {
            let (lo, hi) = block.split_at_mut(h);
            for (a, b) in lo.iter_mut().zip(hi.iter_mut()) {
                let (u, v) = (*a, *b);
                *a = u + v;
                *b = u - v;
            }
        }
        h *= 2;
    }
}

/// Number of differing bits between two equally long codes. Inlined into
/// callers that are compiled with POPCNT (see `hnsw`), where each word costs
/// one instruction.
#[inline(always)]
pub fn ham(a: &[u64], b: &[u64]) -> u32 {
    // 512-bit codes (dimensions 257 to 512, 384 among them) unrolled
    if let (Ok(a), Ok(b)) = (<&[u64; 8]>::try_from(a), <&[u64; 8]>::try_from(b)) {
        return (0..8).map(|i| (a[i] ^ b[i]).count_ones()).sum();
    }
    a.iter().zip(b).map(|(x, y)| (x ^ y).count_ones()).sum()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn f16_known_values() {
        for (x, h) in [
            (0.0f32, 0x0000u16),
            (-0.0, 0x8000),
            (1.0, 0x3c00),
            (-2.0, 0xc000),
            (0.5, 0x3800),
            (65504.0, 0x7bff),
            (1e6, 0x7c00),
            (5.960_464_5e-8, 0x0001),
            (f32::INFINITY, 0x7c00),
        ] {
            assert_eq!(f32_to_f16(x), h, "{x}");
        }
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0x0001), 5.960_464_5e-8);
        assert!(f16_to_f32(f32_to_f16(f32::NAN)).is_nan());
    }

    proptest! {
        #[test]
        fn f16_round_trip_is_close(x in -60000f32..60000f32) {
            let y = f16_to_f32(f32_to_f16(x));
            // binary16 keeps 11 significant bits; subnormals have an
            // absolute step of 2^-24.
            prop_assert!((x - y).abs() <= x.abs() * (1.0 / 2048.0) + 6e-8, "{} -> {}", x, y);
            // Round trip of a representable value is exact.
            prop_assert_eq!(f32_to_f16(y), f32_to_f16(x));
        }
    }

    fn unit(v: Vec<f32>) -> Vec<f32> {
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.into_iter().map(|x| x / n).collect()
    }

    #[test]
    fn fwht_matches_the_hadamard_matrix() {
        for n in [8usize, 16, 256] {
            let x: Vec<f32> = (0..n).map(|i| ((i * 37) % 11) as f32 - 5.0).collect();
            let mut fast = x.clone();
            fwht(&mut fast);
            for (i, got) in fast.iter().enumerate() {
                // H[i][j] = (-1)^popcount(i & j)
                let want: f32 = x
                    .iter()
                    .enumerate()
                    .map(|(j, v)| {
                        if (i & j).count_ones() % 2 == 0 {
                            *v
                        } else {
                            -v
                        }
                    })
                    .sum();
                assert!((got - want).abs() < 1e-3, "n {n} i {i}: {got} vs {want}");
            }
        }
    }

    #[test]
    fn hamming_tracks_angle() {
        let coder = SignCoder::new(48);
        assert_eq!(coder.bits(), 256);
        let a = unit((0..48).map(|i| ((i * 37) % 11) as f32 - 5.0).collect());
        let b = unit(
            a.iter()
                .enumerate()
                .map(|(i, x)| x + 0.05 * ((i % 3) as f32 - 1.0))
                .collect(),
        );
        let c = unit((0..48).map(|i| ((i * 53) % 13) as f32 - 6.0).collect());
        let neg: Vec<f32> = a.iter().map(|x| -x).collect();
        let (ca, cb, cc, cn) = (
            coder.encode(&a),
            coder.encode(&b),
            coder.encode(&c),
            coder.encode(&neg),
        );
        let h = ham;
        assert_eq!(h(&ca, &ca), 0);
        assert!(h(&ca, &cb) < h(&ca, &cc), "{} {}", h(&ca, &cb), h(&ca, &cc));
        // The opposite vector differs in (almost) every bit.
        assert!(h(&ca, &cn) > 240, "{}", h(&ca, &cn));
        // Deterministic.
        assert_eq!(SignCoder::new(48).encode(&a), ca);
    }
}
