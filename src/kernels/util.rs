//! Shared plumbing of the fused kernels: the float trait they are generic over, a
//! vectorisable `exp`, CPU-feature dispatch, uninitialised output buffers and
//! borrowing a tensor's contiguous CPU slice.

use candle_core::{bail, Context, Result, Storage, Tensor, WithDType};
use std::mem::MaybeUninit;

/// f32 (the model) or f64 (the gradient checks).
pub(crate) trait Real: WithDType {
    fn sqrt(self) -> Self;
    /// `exp` that LLVM can vectorise for f32 (no libm call); libm's for f64, so that
    /// the f64 gradient checks test the formulas, not the polynomial.
    fn exp_fast(self) -> Self;
    fn max_(self, other: Self) -> Self;
    fn min_(self, other: Self) -> Self;
}

impl Real for f32 {
    #[inline(always)]
    fn sqrt(self) -> Self {
        f32::sqrt(self)
    }
    #[inline(always)]
    fn exp_fast(self) -> Self {
        exp_f32(self)
    }
    #[inline(always)]
    fn max_(self, other: Self) -> Self {
        if self > other {
            self
        } else {
            other
        }
    }
    #[inline(always)]
    fn min_(self, other: Self) -> Self {
        if self < other {
            self
        } else {
            other
        }
    }
}

impl Real for f64 {
    #[inline(always)]
    fn sqrt(self) -> Self {
        f64::sqrt(self)
    }
    #[inline(always)]
    fn exp_fast(self) -> Self {
        f64::exp(self)
    }
    #[inline(always)]
    fn max_(self, other: Self) -> Self {
        if self > other {
            self
        } else {
            other
        }
    }
    #[inline(always)]
    fn min_(self, other: Self) -> Self {
        if self < other {
            self
        } else {
            other
        }
    }
}

/// exp for f32, branch-free so that loops calling it vectorise: Cody-Waite range
/// reduction x = n·ln2 + r, |r| <= ln2/2, a degree-6 minimax polynomial for e^r
/// (Cephes `expf`, ~1 ulp), and 2^n built in the exponent bits. The input is clamped
/// to [-87.3, 88.3] so that 2^n stays a normal number: callers only use it where
/// e^88 already saturates the result (see gelu), never to produce inf.
#[inline(always)]
pub(crate) fn exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const C1: f32 = 0.693_359_4; // ln2 high part, exact in a few bits
    const C2: f32 = -2.121_944_4e-4; // ln2 - C1
                                     // 1.5·2^23: adding and subtracting rounds to nearest integer without SSE4.1.
    const ROUND: f32 = 12_582_912.0;
    let x = x.max_(-87.3).min_(88.3);
    let n = (x * LOG2E + ROUND) - ROUND;
    let r = x - n * C1 - n * C2;
    let mut p = 1.987_569_1e-4_f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let er = p * r * r + r + 1.0;
    let scale = f32::from_bits(((n as i32 + 127) as u32) << 23);
    er * scale
}

/// Runs `$body` (an expression using generic code marked `#[inline(always)]`)
/// compiled for AVX-512, AVX2+FMA or the baseline, whichever the CPU has. The
/// choice is made at run time, per machine, so results are reproducible on one
/// machine (FMA changes rounding between machines, not between runs).
macro_rules! dispatch {
    ($body:expr) => {{
        #[cfg(target_arch = "x86_64")]
        {
            #[target_feature(enable = "avx512f,avx2,fma")]
            unsafe fn avx512<R>(f: impl FnOnce() -> R) -> R {
                f()
            }
            #[target_feature(enable = "avx2,fma")]
            unsafe fn avx2<R>(f: impl FnOnce() -> R) -> R {
                f()
            }
            if std::arch::is_x86_feature_detected!("avx512f") {
                // SAFETY: the CPU supports the features the function is compiled for.
                unsafe { avx512(|| $body) }
            } else if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                // SAFETY: as above.
                unsafe { avx2(|| $body) }
            } else {
                $body
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            $body
        }
    }};
}
pub(crate) use dispatch;

/// A buffer of `n` uninitialised elements. Kernels write every element before
/// [`assume_init`]; skipping the zero-fill matters because outputs are large
/// (16 MB at the model's shape) and are written exactly once.
pub(crate) fn uninit_vec<T>(n: usize) -> Vec<MaybeUninit<T>> {
    let mut v = Vec::with_capacity(n);
    // SAFETY: MaybeUninit<T> needs no initialisation.
    unsafe { v.set_len(n) };
    v
}

/// # Safety
/// Every element of `v` must have been written.
pub(crate) unsafe fn assume_init<T>(v: Vec<MaybeUninit<T>>) -> Vec<T> {
    let mut v = std::mem::ManuallyDrop::new(v);
    Vec::from_raw_parts(v.as_mut_ptr() as *mut T, v.len(), v.capacity())
}

/// The contiguous slice a CPU storage holds for `layout`, or an error if the layout
/// is strided (callers make inputs contiguous before applying the op).
pub(crate) fn contiguous_slice<'a, T: WithDType>(
    s: &'a candle_core::CpuStorage,
    layout: &candle_core::Layout,
) -> Result<&'a [T]> {
    let (start, end) = layout
        .contiguous_offsets()
        .context("fused kernel: input is not contiguous")?;
    Ok(&s.as_slice::<T>()?[start..end])
}

/// Calls `f` with the contiguous CPU data of `t` (copied only if `t` is strided).
pub(crate) fn with_slice<T: WithDType, R>(
    t: &Tensor,
    f: impl FnOnce(&[T]) -> Result<R>,
) -> Result<R> {
    let t = t.detach().contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else {
        bail!("fused kernel: only CPU tensors are supported")
    };
    f(contiguous_slice::<T>(cpu, layout)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The polynomial exp against libm over the range gelu uses, in ulps of the
    /// f64 truth rounded to f32.
    #[test]
    fn exp_f32_within_two_ulp() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let got = exp_f32(x) as f64;
            let want = (x as f64).exp();
            let ulp = (want as f32).abs() * f32::EPSILON;
            worst = worst.max((got - want).abs() / ulp as f64);
            x += 0.0137;
        }
        println!("exp_f32 worst error {worst:.3} ulp");
        assert!(worst < 2.0, "exp_f32 error {worst} ulp");
        assert_eq!(exp_f32(-200.0), exp_f32(-87.3));
        assert!(exp_f32(200.0).is_finite());
    }
}
