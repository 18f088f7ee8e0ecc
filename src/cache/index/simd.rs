//! The vector kernels of the indexes: dot products of an f32 query with f32
//! or half-precision rows, and cache prefetch hints.
//!
//! On x86-64 the dot products use AVX2+FMA (and F16C for half-precision
//! rows) when the CPU has them, detected at run time by the standard
//! library (`is_x86_feature_detected!` caches its answer), so wheels stay
//! portable; everywhere else a portable loop runs that the compiler
//! vectorises with the baseline instruction set.

use super::quant::f16_to_f32;

/// The dot-product kernels this CPU runs: a loop over many rows detects
/// them once before it starts, and each row's call is then a plain branch.
#[derive(Clone, Copy, Debug)]
// read only by the x86-64 kernels
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub struct Kernels {
    /// AVX2 and FMA: f32 rows.
    avx2: bool,
    /// AVX2, FMA and F16C: half-precision rows.
    f16c: bool,
}

impl Kernels {
    #[inline]
    pub fn detect() -> Kernels {
        #[cfg(target_arch = "x86_64")]
        {
            let avx2 = std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma");
            Kernels {
                avx2,
                f16c: avx2 && std::arch::is_x86_feature_detected!("f16c"),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            Kernels {
                avx2: false,
                f16c: false,
            }
        }
    }

    /// Dot product of two equally long f32 slices.
    #[inline(always)]
    pub fn dot(self, a: &[f32], b: &[f32]) -> f32 {
        #[cfg(target_arch = "x86_64")]
        {
            if self.avx2 {
                // SAFETY: `detect` found the features `dot_f32` is compiled for.
                return unsafe { avx2::dot_f32(a, b) };
            }
        }
        dot_portable(a, b)
    }

    /// Dot product of an f32 query with a half-precision row.
    #[inline(always)]
    pub fn dot_f16(self, q: &[f32], row: &[u16]) -> f32 {
        #[cfg(target_arch = "x86_64")]
        {
            if self.f16c {
                // SAFETY: `detect` found the features `dot_f16` is compiled for.
                return unsafe { avx2::dot_f16(q, row) };
            }
        }
        q.iter().zip(row).map(|(&a, &b)| a * f16_to_f32(b)).sum()
    }
}

/// Whether the CPU counts bits in one instruction (the HNSW walk's
/// Hamming distances are compiled for it when it does).
#[cfg(target_arch = "x86_64")]
#[inline]
pub fn has_popcnt() -> bool {
    std::arch::is_x86_feature_detected!("popcnt")
}

/// Sixteen independent accumulators over contiguous f32, which the compiler
/// turns into two or four SIMD registers.
fn dot_portable(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
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
}

/// Hints the CPU to load `bytes` bytes from `p` into cache (a no-op where
/// unsupported). Reading the candidates' rows in parallel instead of one
/// cache miss after another is most of the re-rank's speed.
#[inline]
pub fn prefetch(p: *const u8, bytes: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        // Every line the range touches (an unaligned range spans one more).
        let mut line = (p as usize & !63) as *const u8;
        let end = p.wrapping_add(bytes);
        while line < end {
            // SAFETY: prefetch never faults; the address is only a hint.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(line as *const i8) };
            line = line.wrapping_add(64);
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (p, bytes);
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::f16_to_f32;

    /// A row the kernel reads eight lanes at a time, as f32.
    trait Row {
        fn len(&self) -> usize;
        /// Lanes `i..i + 8` as f32.
        ///
        /// # Safety
        /// `i + 8 <= self.len()`, and the caller is compiled with the
        /// features the load needs (AVX, and F16C for half precision).
        unsafe fn load8(&self, i: usize) -> __m256;
        fn at(&self, i: usize) -> f32;
    }

    impl Row for [f32] {
        #[inline(always)]
        fn len(&self) -> usize {
            <[f32]>::len(self)
        }
        #[inline(always)]
        unsafe fn load8(&self, i: usize) -> __m256 {
            // SAFETY: in bounds by the caller's contract; unaligned loads
            // are allowed.
            unsafe { _mm256_loadu_ps(self.as_ptr().add(i)) }
        }
        #[inline(always)]
        fn at(&self, i: usize) -> f32 {
            self[i]
        }
    }

    impl Row for [u16] {
        #[inline(always)]
        fn len(&self) -> usize {
            <[u16]>::len(self)
        }
        #[inline(always)]
        unsafe fn load8(&self, i: usize) -> __m256 {
            // SAFETY: in bounds by the caller's contract (eight u16 are 16
            // bytes); unaligned loads are allowed.
            unsafe { _mm256_cvtph_ps(_mm_loadu_si128(self.as_ptr().add(i) as *const __m128i)) }
        }
        #[inline(always)]
        fn at(&self, i: usize) -> f32 {
            f16_to_f32(self[i])
        }
    }

    /// The one kernel: four accumulators over 32 lanes a step, then single
    /// steps of eight, then the scalar tail.
    ///
    /// # Safety
    /// Inlined only into functions compiled with AVX2, FMA and what
    /// `R::load8` needs.
    #[inline(always)]
    unsafe fn dot8<R: Row + ?Sized>(q: &[f32], row: &R) -> f32 {
        let n = q.len().min(row.len());
        let mut i = 0;
        // SAFETY: every load reads 8 lanes at `i + 8k`, below `n` by the
        // loop bounds; the features are enabled by the caller.
        unsafe {
            let mut acc = [_mm256_setzero_ps(); 4];
            while i + 32 <= n {
                for (k, lane) in acc.iter_mut().enumerate() {
                    let x = row.load8(i + 8 * k);
                    let y = _mm256_loadu_ps(q.as_ptr().add(i + 8 * k));
                    *lane = _mm256_fmadd_ps(x, y, *lane);
                }
                i += 32;
            }
            while i + 8 <= n {
                let y = _mm256_loadu_ps(q.as_ptr().add(i));
                acc[0] = _mm256_fmadd_ps(row.load8(i), y, acc[0]);
                i += 8;
            }
            let sum = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
            let mut lanes = [0f32; 8];
            _mm256_storeu_ps(lanes.as_mut_ptr(), sum);
            let mut s = lanes.iter().sum::<f32>();
            while i < n {
                s += q[i] * row.at(i);
                i += 1;
            }
            s
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
        // SAFETY: this function is compiled with the features the kernel needs.
        unsafe { dot8(a, b) }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_f16(q: &[f32], row: &[u16]) -> f32 {
        // SAFETY: as above, F16C included for the half-precision loads.
        unsafe { dot8(q, row) }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::super::quant::f32_to_f16;
    use super::*;
    use proptest::prelude::*;

    fn dot(a: &[f32], b: &[f32]) -> f32 {
        Kernels::detect().dot(a, b)
    }

    fn naive(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }

    #[test]
    fn dot_matches_naive() {
        let a: Vec<f32> = (0..37).map(|i| i as f32 * 0.1).collect();
        let b: Vec<f32> = (0..37).map(|i| 1.0 - i as f32 * 0.05).collect();
        assert!((dot(&a, &b) - naive(&a, &b)).abs() < 1e-3);
        assert!((dot_portable(&a, &b) - naive(&a, &b)).abs() < 1e-3);
    }

    proptest! {
        #[test]
        fn kernels_agree_with_the_portable_loops(v in proptest::collection::vec(-1f32..1f32, 0..200)) {
            let q: Vec<f32> = v.iter().map(|x| 0.5 - x).collect();
            prop_assert!((dot(&q, &v) - dot_portable(&q, &v)).abs() < 1e-3);
            let row: Vec<u16> = v.iter().map(|&x| f32_to_f16(x)).collect();
            let portable: f32 = q.iter().zip(&row).map(|(&a, &b)| a * f16_to_f32(b)).sum();
            let f16 = Kernels::detect().dot_f16(&q, &row);
            prop_assert!((f16 - portable).abs() < 1e-3);
            prop_assert!((f16 - naive(&q, &v)).abs() < 1e-2);
        }
    }
}
