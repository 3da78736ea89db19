//! The element types of the cross-entropy kernel: `Real`, the arithmetic type (f32, or
//! f64 for f64 logits), with the streaming (cache-bypassing) stores the gradient is
//! written with, and `Elem`, how logits and gradients of each stored type (f32, f64,
//! bf16, f16) load into and store from it.

use crate::cpu::as_uninit;
#[cfg(target_arch = "x86_64")]
use crate::cpu::simd::{self, Level};
use crate::fastmath::exp_f32_nonpos;
use half::{bf16, f16};
use std::mem::MaybeUninit;
use std::ops::{Add, Div, Mul, Neg, Sub};

/// Elements per block of the streamed pass C: 4 KiB of f32, so the block stays in L1
/// between its computation and its streaming store.
pub(super) const STREAM_BLOCK: usize = 1024;

/// The arithmetic type of the kernel: f32 for f32/bf16/f16 logits, f64 for f64 logits.
pub(crate) trait Real:
    Copy
    + Send
    + Sync
    + 'static
    + PartialOrd
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + Neg<Output = Self>
    + Elem<Self>
{
    const ZERO: Self;
    const ONE: Self;
    const INF: Self;
    /// exp(x) for x ≤ 0 (the kernel only exponentiates y - max), exact 0 below the
    /// smallest normal result.
    fn exp_nonpos(x: Self) -> Self;
    fn ln(self) -> Self;
    fn tanh(self) -> Self;
    fn from_f64(x: f64) -> Self;
    fn to_f64(self) -> f64;
    fn is_nan(self) -> bool;
    /// dst = src, with non-temporal (cache-bypassing) stores where the CPU has them
    /// for this type: the gradient is written once and not read back by the kernel, so
    /// fetching its lines into the cache first (a read for ownership) is wasted
    /// traffic. Callers fence ([`store_fence`]) before the data is handed on.
    #[inline(always)]
    fn stream_copy(dst: &mut [MaybeUninit<Self>], src: &[Self]) {
        dst.write_copy_of_slice(src);
    }
    /// dst_j = a·e_j - b, minus `hit` at index `t` when given, written as
    /// [`Self::stream_copy`] writes; `buf` (at least `e.len()` long) stages the values
    /// where the stores cannot take them straight from registers.
    #[inline(always)]
    fn stream_affine(
        dst: &mut [MaybeUninit<Self>],
        e: &[Self],
        (a, b): (Self, Self),
        t: Option<usize>,
        hit: Self,
        buf: &mut [Self],
    ) {
        affine_via_buf(dst, e, (a, b), t, hit, buf)
    }
}

/// [`Real::stream_affine`] through the staging row: computed into `buf` (L1), then
/// copied out with [`Real::stream_copy`].
#[inline(always)]
fn affine_via_buf<F: Real>(
    dst: &mut [MaybeUninit<F>],
    e: &[F],
    (a, b): (F, F),
    t: Option<usize>,
    hit: F,
    buf: &mut [F],
) {
    let bc = &mut buf[..e.len()];
    for (o, &ev) in bc.iter_mut().zip(e) {
        *o = a * ev - b;
    }
    if let Some(t) = t {
        bc[t] = bc[t] - hit;
    }
    F::stream_copy(dst, bc);
}

impl Real for f32 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    const INF: Self = f32::INFINITY;
    #[inline(always)]
    fn exp_nonpos(x: f32) -> f32 {
        exp_f32_nonpos(x)
    }
    fn ln(self) -> f32 {
        f32::ln(self)
    }
    fn tanh(self) -> f32 {
        f32::tanh(self)
    }
    fn from_f64(x: f64) -> f32 {
        x as f32
    }
    fn to_f64(self) -> f64 {
        self as f64
    }
    fn is_nan(self) -> bool {
        f32::is_nan(self)
    }
    #[inline(always)]
    fn stream_copy(dst: &mut [MaybeUninit<f32>], src: &[f32]) {
        #[cfg(target_arch = "x86_64")]
        if simd::level() == Level::Avx512 {
            // SAFETY: `simd::level` reports AVX-512 only when the CPU has it.
            return unsafe { stream_copy_avx512(dst, src) };
        }
        dst.write_copy_of_slice(src);
    }
    #[inline(always)]
    fn stream_affine(
        dst: &mut [MaybeUninit<f32>],
        e: &[f32],
        ab: (f32, f32),
        t: Option<usize>,
        hit: f32,
        buf: &mut [f32],
    ) {
        // Straight from registers when e and dst share their place in a line (e is
        // line-aligned, see `row::line_row`): otherwise every load of e would
        // straddle two lines, which is slower than staging the values in `buf`.
        #[cfg(target_arch = "x86_64")]
        if simd::level() == Level::Avx512
            && (dst.as_ptr() as usize) % 64 == (e.as_ptr() as usize) % 64
        {
            // SAFETY: `simd::level` reports AVX-512 only when the CPU has it.
            return unsafe { stream_affine_avx512(dst, e, ab, t, hit) };
        }
        affine_via_buf(dst, e, ab, t, hit, buf)
    }
}

/// [`Real::stream_affine`] for f32 on AVX-512: each aligned 64-byte line of `dst` is
/// computed in a register and stored non-temporally, with no staging row (whose extra
/// stores queue up behind the streaming ones). The same operations as
/// `affine_via_buf` (a multiply then a subtract, no FMA), so the same bits.
///
/// # Safety
/// The CPU must have AVX-512 F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn stream_affine_avx512(
    dst: &mut [MaybeUninit<f32>],
    e: &[f32],
    (a, b): (f32, f32),
    t: Option<usize>,
    hit: f32,
) {
    use std::arch::x86_64::{
        _mm512_loadu_ps, _mm512_mask_sub_ps, _mm512_mul_ps, _mm512_set1_ps, _mm512_stream_ps,
        _mm512_sub_ps,
    };
    let n = dst.len();
    assert_eq!(e.len(), n);
    let one = |j: usize| {
        let g = a * e[j] - b;
        if t == Some(j) {
            g - hit
        } else {
            g
        }
    };
    // Elements before the first 64-byte boundary of dst, and after the last full line.
    let head = dst.as_ptr().align_offset(64).min(n);
    let end = head + (n - head) / 16 * 16;
    for j in (0..head).chain(end..n) {
        dst[j].write(one(j));
    }
    let (va, vb, vhit) = (_mm512_set1_ps(a), _mm512_set1_ps(b), _mm512_set1_ps(hit));
    let d = dst.as_mut_ptr() as *mut f32;
    let mut j = head;
    while j < end {
        // SAFETY: j + 16 <= end <= n keeps both in bounds; d + j is 64-byte aligned
        // (head brought it there, and j steps by 16 f32 = 64 bytes).
        unsafe {
            let mut g = _mm512_sub_ps(_mm512_mul_ps(va, _mm512_loadu_ps(e.as_ptr().add(j))), vb);
            if let Some(t) = t {
                if t.wrapping_sub(j) < 16 {
                    g = _mm512_mask_sub_ps(g, 1 << (t - j), g, vhit);
                }
            }
            _mm512_stream_ps(d.add(j), g);
        }
        j += 16;
    }
}

/// dst = src with 64-byte non-temporal stores for the aligned middle part.
///
/// # Safety
/// The CPU must have AVX-512 F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn stream_copy_avx512(dst: &mut [MaybeUninit<f32>], src: &[f32]) {
    use std::arch::x86_64::{_mm512_loadu_ps, _mm512_stream_ps};
    assert_eq!(dst.len(), src.len());
    let n = dst.len();
    // Elements before the first 64-byte boundary of dst.
    let head = (dst.as_ptr().align_offset(64)).min(n);
    dst[..head].write_copy_of_slice(&src[..head]);
    let body = (n - head) / 16 * 16;
    let (d, s) = (dst[head..].as_mut_ptr() as *mut f32, src[head..].as_ptr());
    let mut i = 0;
    while i < body {
        // SAFETY: i + 16 <= body <= n - head keeps both in bounds; d + i is 64-byte
        // aligned (head brought d there, and i steps by 16 f32 = 64 bytes).
        unsafe { _mm512_stream_ps(d.add(i), _mm512_loadu_ps(s.add(i))) };
        i += 16;
    }
    dst[head + body..].write_copy_of_slice(&src[head + body..]);
}

/// dst = src·k written with the kernel's streaming stores, then fenced: the memory
/// bandwidth probe of `tinylm bench loss` (reading once and writing once at the same
/// cost per byte as the kernel's gradient, without a read for ownership).
pub(crate) fn stream_scale_f32(dst: &mut [f32], src: &[f32], k: f32) {
    let mut buf = [0f32; STREAM_BLOCK];
    for (d, s) in dst.chunks_mut(STREAM_BLOCK).zip(src.chunks(STREAM_BLOCK)) {
        let b = &mut buf[..s.len()];
        for (o, &x) in b.iter_mut().zip(s) {
            *o = x * k;
        }
        <f32 as Real>::stream_copy(as_uninit(d), b);
    }
    store_fence();
}

/// Orders the non-temporal stores of [`Real::stream_copy`] before later stores (the
/// end of a rayon job, after which other threads may read the gradient).
#[inline]
pub(crate) fn store_fence() {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: sfence has no preconditions (SSE is baseline on x86_64).
    unsafe {
        std::arch::x86_64::_mm_sfence()
    }
}

impl Real for f64 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    const INF: Self = f64::INFINITY;
    #[inline(always)]
    fn exp_nonpos(x: f64) -> f64 {
        x.exp()
    }
    fn ln(self) -> f64 {
        f64::ln(self)
    }
    fn tanh(self) -> f64 {
        f64::tanh(self)
    }
    fn from_f64(x: f64) -> f64 {
        x
    }
    fn to_f64(self) -> f64 {
        self
    }
    fn is_nan(self) -> bool {
        f64::is_nan(self)
    }
}

/// A logits/gradient element type, stored as `Self` and computed in `F`.
pub(crate) trait Elem<F: Real>: Copy + Send + Sync + 'static {
    fn load(self) -> F;
    fn store(x: F) -> Self;
    /// The slice as the arithmetic type when the two are the same (f32/f32, f64/f64):
    /// then pass B can park e_j in the gradient row itself.
    fn as_real_mut(s: &mut [Self]) -> Option<&mut [F]>;
    /// Whether `Self` is `F` (then `as_real_mut` and `as_real_uninit` return `Some`).
    const IS_REAL: bool;
    fn as_real_uninit(s: &mut [MaybeUninit<Self>]) -> Option<&mut [MaybeUninit<F>]>;
}

/// `Elem` for a type that is its own arithmetic type (f32, f64): loads and stores are
/// the identity, and pass B can park e_j in the gradient row itself.
macro_rules! elem_real {
    ($($t:ty),*) => {$(
        impl Elem<$t> for $t {
            #[inline(always)]
            fn load(self) -> $t {
                self
            }
            #[inline(always)]
            fn store(x: $t) -> $t {
                x
            }
            fn as_real_mut(s: &mut [$t]) -> Option<&mut [$t]> {
                Some(s)
            }
            const IS_REAL: bool = true;
            fn as_real_uninit(s: &mut [MaybeUninit<$t>]) -> Option<&mut [MaybeUninit<$t>]> {
                Some(s)
            }
        }
    )*};
}

/// `Elem` for a 16-bit float computed in f32: converted on load and store.
macro_rules! elem_half {
    ($($t:ty),*) => {$(
        impl Elem<f32> for $t {
            #[inline(always)]
            fn load(self) -> f32 {
                self.to_f32()
            }
            #[inline(always)]
            fn store(x: f32) -> $t {
                <$t>::from_f32(x)
            }
            fn as_real_mut(_: &mut [$t]) -> Option<&mut [f32]> {
                None
            }
            const IS_REAL: bool = false;
            fn as_real_uninit(_: &mut [MaybeUninit<$t>]) -> Option<&mut [MaybeUninit<f32>]> {
                None
            }
        }
    )*};
}

elem_real!(f32, f64);
elem_half!(bf16, f16);
