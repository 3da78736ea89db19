//! Shared plumbing of the fused kernels: the float trait they are generic over,
//! CPU-feature dispatch, uninitialised output buffers and borrowing a tensor's
//! contiguous CPU slice. (The vectorisable `exp` is `crate::fastmath`'s.)

use crate::fastmath::exp_f32;
use candle_core::{bail, Context, Result, Storage, Tensor, WithDType};
use std::mem::MaybeUninit;

/// f32 (the model) or f64 (the gradient checks).
pub(crate) trait Real: WithDType {
    fn sqrt(self) -> Self;
    /// `exp` that LLVM can vectorise for f32 (no libm call); libm's for f64, so that
    /// the f64 gradient checks test the formulas, not the polynomial.
    fn exp_fast(self) -> Self;
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
}

/// Runs `$body` (an expression using generic code marked `#[inline(always)]`)
/// compiled for AVX-512, AVX2+FMA or the baseline, whichever the CPU has. The
/// choice is made at run time, per machine. Every copy computes the same bits: Rust
/// never contracts a·b + c into an FMA, and the explicit `mul_add`s (in
/// `crate::fastmath`) are exactly rounded everywhere.
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

/// An initialised slice seen as possibly-uninitialised, for code that writes outputs
/// through `MaybeUninit` (the streamed gradient, gemm into its destination).
pub(crate) fn as_uninit<T>(s: &mut [T]) -> &mut [MaybeUninit<T>] {
    // SAFETY: same layout; callers only write initialised values through it, so every
    // element stays initialised.
    unsafe { &mut *(s as *mut [T] as *mut [MaybeUninit<T>]) }
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

/// [`contiguous_slice`] of a tensor's storage, which must be on the CPU.
pub(crate) fn storage_slice<'a, T: WithDType>(
    s: &'a Storage,
    layout: &candle_core::Layout,
) -> Result<&'a [T]> {
    let Storage::Cpu(cpu) = s else {
        bail!("fused kernel: only CPU tensors are supported")
    };
    contiguous_slice::<T>(cpu, layout)
}

/// Calls `f` with the contiguous CPU data of `t` (copied only if `t` is strided).
pub(crate) fn with_slice<T: WithDType, R>(
    t: &Tensor,
    f: impl FnOnce(&[T]) -> Result<R>,
) -> Result<R> {
    let t = t.detach().contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    f(storage_slice::<T>(&storage, layout)?)
}
