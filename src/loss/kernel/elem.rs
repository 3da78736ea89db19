//! The element types of the cross-entropy kernel: `Real`, the arithmetic type (f32, or
//! f64 for f64 logits), with the streaming (cache-bypassing) stores the gradient is
//! written with, and `Elem`, how logits and gradients of each stored type (f32, f64,
//! bf16, f16) load into and store from it.

#[cfg(target_arch = "x86_64")]
use crate::cpu::simd::{self, Level};
use crate::cpu::{as_uninit, bf16_bits_rne, bf16_bits_rne_ftz, bf16_to_f32};
use crate::fastmath::{
    exp_f32_nonpos, exp_f32_nonpos_lanes, exp_shifted_base2, exp_shifted_base2_lanes,
};
use half::{bf16, f16};
use std::mem::MaybeUninit;
use std::ops::{Add, Div, Mul, Neg, Sub};

/// Elements per block of the pipeline's pass B (4 KiB of f32, so the block stays in
/// L1 between its computation and its streaming store); pass C's blocks, which end on
/// the gradient's lines (`row::Pending::block_start`), run up to a line longer.
pub(super) const STREAM_BLOCK: usize = 1024;

/// Values per [`Real::exp_nonpos_lanes`]: four AVX-512 or eight AVX2 registers.
pub(super) const EXP_LANES: usize = 64;

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
    /// y = `exp_nonpos` of each of `EXP_LANES` values (the same bits), computed so that
    /// the lanes' dependency chains overlap ([`crate::fastmath::exp_f32_nonpos_lanes`]).
    #[inline(always)]
    fn exp_nonpos_lanes(x: &[Self; EXP_LANES], y: &mut [Self; EXP_LANES]) {
        for (yv, &xv) in y.iter_mut().zip(x) {
            *yv = Self::exp_nonpos(xv);
        }
    }
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
    #[inline(always)]
    fn exp_nonpos_lanes(x: &[f32; EXP_LANES], y: &mut [f32; EXP_LANES]) {
        exp_f32_nonpos_lanes(x, y)
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
        // Straight from registers when e and dst share their place in a line (e's
        // row starts on a line, see `row::line_row`, so a gradient row that does too):
        // otherwise every load of e would straddle two lines, which is slower than
        // staging the values in `buf`.
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
    /// The row converted to `F` into `out` (resized to its length), where converting it
    /// once is cheaper than converting each element every time a pass reads it (f16
    /// with F16C: one instruction per 8 elements instead of about a dozen); returns whether
    /// it did. The values are those `load` gives.
    #[inline(always)]
    fn widen(_x: &[Self], _out: &mut Vec<F>) -> bool {
        false
    }
    /// e^(x - m) for a logit x of a row whose max is m, as pass B of rows of this
    /// type computes it: the arithmetic type's [`Real::exp_nonpos`] of x - m, except
    /// for bf16 rows ([`crate::fastmath::exp_shifted_base2`]: their logits carry 8
    /// significant bits).
    #[inline(always)]
    fn exp_shifted(x: F, m: F) -> F {
        F::exp_nonpos(x - m)
    }
    /// [`Elem::exp_shifted`] on `EXP_LANES` values (the same bits).
    #[inline(always)]
    fn exp_shifted_lanes(x: &[F; EXP_LANES], m: F, y: &mut [F; EXP_LANES]) {
        F::exp_nonpos_lanes(&std::array::from_fn(|l| x[l] - m), y)
    }
    /// Pass A's max of the row (as `row::pass_max` takes it, up to the sign of a zero
    /// max) where the type has its own SIMD code for it (bf16 on AVX-512), else None.
    #[inline(always)]
    fn simd_max(_x: &[Self]) -> Option<F> {
        None
    }
    /// Pass B over a block (as `row::exp_block` computes it, the same bits) where the
    /// type has its own SIMD code for it (bf16 on AVX-512); returns whether it did.
    /// `pf(k)` prefetches the next row's share of 16-element chunk k.
    #[inline(always)]
    fn simd_exp_block(
        _x: &[Self],
        _m: F,
        _e: &mut [F],
        _s: &mut [F; 16],
        _pf: impl Fn(usize),
    ) -> bool {
        false
    }
    /// dst_j = store(a·e_j - b), minus `hit` (before the rounding) at index `t` when
    /// given (for bf16: [`bf16_grad`], one FMA and subnormals to zero), written with
    /// non-temporal stores where the CPU has them for this type (see
    /// [`Real::stream_copy`]); `buf` (at least `e.len()` long) stages the values.
    fn stream_grad(
        dst: &mut [MaybeUninit<Self>],
        e: &[F],
        ab: (F, F),
        t: Option<usize>,
        hit: F,
        buf: &mut [F],
    );
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
            #[inline(always)]
            fn stream_grad(
                dst: &mut [MaybeUninit<$t>],
                e: &[$t],
                ab: ($t, $t),
                t: Option<usize>,
                hit: $t,
                buf: &mut [$t],
            ) {
                <$t as Real>::stream_affine(dst, e, ab, t, hit, buf)
            }
        }
    )*};
}

/// `Elem` for a 16-bit float computed in f32: converted on load and store by the
/// branch-free `$load` / `$store` (bit-exact with `half`'s conversions, rounding to
/// nearest even), which LLVM vectorises; `half`'s own f16 conversions ask the CPU
/// for F16C on every element, and its bf16 rounding branches. `$widen` converts a
/// whole row where that pays ([`Elem::widen`]), `$affine` writes the rounded
/// gradient values a·e_j - b and `$one` the target's; `$direct` writes a streamed
/// gradient block straight from registers where the type has SIMD code for it
/// (returning whether it did). The braces hold the type's own overrides of `Elem`'s
/// other defaults.
macro_rules! elem_half {
    ($($t:ty: $load:ident, $store:ident, $widen:ident, $affine:ident, $one:ident, $direct:path, { $($extra:tt)* });*) => {$(
        impl Elem<f32> for $t {
            $($extra)*
            #[inline(always)]
            fn load(self) -> f32 {
                $load(self.to_bits())
            }
            #[inline(always)]
            fn store(x: f32) -> $t {
                <$t>::from_bits($store(x))
            }
            fn as_real_mut(_: &mut [$t]) -> Option<&mut [f32]> {
                None
            }
            #[inline(always)]
            fn widen(x: &[$t], out: &mut Vec<f32>) -> bool {
                // SAFETY: $t is a `repr(transparent)` u16.
                $widen(unsafe { std::slice::from_raw_parts(x.as_ptr().cast::<u16>(), x.len()) }, out)
            }
            /// Rounded into the staging row (seen as u16, which needs no more
            /// alignment than f32), then copied out with non-temporal stores; or
            /// straight from registers where the type has SIMD code for it.
            #[inline(always)]
            fn stream_grad(
                dst: &mut [MaybeUninit<$t>],
                e: &[f32],
                (a, b): (f32, f32),
                t: Option<usize>,
                hit: f32,
                buf: &mut [f32],
            ) {
                let n = e.len();
                assert!(dst.len() == n && buf.len() >= n);
                // SAFETY: $t is a `repr(transparent)` u16.
                let d = unsafe {
                    std::slice::from_raw_parts_mut(dst.as_mut_ptr().cast::<MaybeUninit<u16>>(), n)
                };
                if $direct(d, e, (a, b), t, hit) {
                    return;
                }
                // SAFETY: the f32 row holds 2·len u16 (same memory, looser alignment).
                let bits = unsafe {
                    std::slice::from_raw_parts_mut(buf.as_mut_ptr().cast::<u16>(), n)
                };
                $affine(bits, e, (a, b));
                if let Some(t) = t {
                    bits[t] = $one(a, e[t], b, hit);
                }
                stream_copy_u16(d, bits);
            }
        }
    )*};
}

elem_real!(f32, f64);
elem_half!(
    bf16: bf16_to_f32, bf16_bits_rne, no_widen, bf16_affine, bf16_grad, bf16_simd::stream_grad, {
        #[inline(always)]
        fn exp_shifted(x: f32, m: f32) -> f32 {
            exp_shifted_base2(x, m)
        }
        #[inline(always)]
        fn exp_shifted_lanes(x: &[f32; EXP_LANES], m: f32, y: &mut [f32; EXP_LANES]) {
            exp_shifted_base2_lanes(x, m, y)
        }
        #[inline(always)]
        fn simd_max(x: &[bf16]) -> Option<f32> {
            bf16_simd::row_max(bits_of(x))
        }
        #[inline(always)]
        fn simd_exp_block(
            x: &[bf16],
            m: f32,
            e: &mut [f32],
            s: &mut [f32; 16],
            pf: impl Fn(usize),
        ) -> bool {
            bf16_simd::exp_block(bits_of(x), m, e, s, pf)
        }
    };
    f16: f16_to_f32, f16_bits_rne, f16_widen, f16_affine, f16_grad, no_direct, {}
);

/// A 16-bit float row as its bits.
#[inline(always)]
fn bits_of<H>(x: &[H]) -> &[u16] {
    debug_assert_eq!(std::mem::size_of::<H>(), 2);
    // SAFETY: only called with bf16 and f16, `repr(transparent)` u16s.
    unsafe { std::slice::from_raw_parts(x.as_ptr().cast::<u16>(), x.len()) }
}

/// The SIMD passes of bf16 rows (`super::bf16_rows`), taken on AVX-512; each returns
/// None or false where they are not, and the generic loops run.
mod bf16_simd {
    #[cfg(target_arch = "x86_64")]
    use crate::cpu::simd::{self, Level};
    use std::mem::MaybeUninit;

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    fn on() -> bool {
        simd::level() == Level::Avx512
    }

    #[inline(always)]
    pub(super) fn row_max(x: &[u16]) -> Option<f32> {
        #[cfg(target_arch = "x86_64")]
        if on() {
            // SAFETY: `simd::level` reports AVX-512 only when the CPU has it.
            return Some(unsafe { super::super::bf16_rows::row_max(x) });
        }
        let _ = x;
        None
    }

    #[inline(always)]
    pub(super) fn exp_block(
        x: &[u16],
        m: f32,
        e: &mut [f32],
        s: &mut [f32; 16],
        pf: impl Fn(usize),
    ) -> bool {
        #[cfg(target_arch = "x86_64")]
        if on() {
            // SAFETY: as above; `row::exp_block` passes rows of one length.
            unsafe { super::super::bf16_rows::exp_block(x, m, e, s, pf) };
            return true;
        }
        let _ = (x, m, e, s, pf);
        false
    }

    #[inline(always)]
    pub(super) fn stream_grad(
        dst: &mut [MaybeUninit<u16>],
        e: &[f32],
        ab: (f32, f32),
        t: Option<usize>,
        hit: f32,
    ) -> bool {
        #[cfg(target_arch = "x86_64")]
        if on() {
            use super::super::bf16_rows::{stream_grad, stream_grad_bf16};
            // SAFETY: as above, and `has_avx512bf16` checked AVX512-BF16; the caller
            // checked the lengths.
            unsafe {
                if simd::has_avx512bf16() {
                    stream_grad_bf16(dst, e, ab, t, hit)
                } else {
                    stream_grad(dst, e, ab, t, hit)
                }
            };
            return true;
        }
        let _ = (dst, e, ab, t, hit);
        false
    }
}

/// The `$direct` of a type without SIMD code for its gradient (f16): not done.
#[inline(always)]
fn no_direct(
    _: &mut [MaybeUninit<u16>],
    _: &[f32],
    _: (f32, f32),
    _: Option<usize>,
    _: f32,
) -> bool {
    false
}

/// [`Elem::widen`] for bf16: not done, its load is a shift (BENCHMARKS.md, "f16
/// through F16C", has the measurement).
#[inline(always)]
fn no_widen(_: &[u16], _: &mut Vec<f32>) -> bool {
    false
}

/// A streamed bf16 gradient value: a·e - b in one fused multiply-add, minus `hit` (0
/// off the target), rounded by [`bf16_bits_rne_ftz`]; the rounding and the fused
/// step are those of the AVX-512 pass C (`super::bf16_rows`).
#[inline(always)]
pub(crate) fn bf16_grad(a: f32, e: f32, b: f32, hit: f32) -> u16 {
    bf16_bits_rne_ftz(a.mul_add(e, -b) - hit)
}

/// bits_j = [`bf16_grad`] off the target.
#[inline(always)]
fn bf16_affine(bits: &mut [u16], e: &[f32], (a, b): (f32, f32)) {
    for (o, &ev) in bits.iter_mut().zip(e) {
        *o = bf16_grad(a, ev, b, 0.0);
    }
}

/// A streamed f16 gradient value: a·e - b, minus `hit` at the target, rounded to
/// nearest even (the f32 kernel's arithmetic).
#[inline(always)]
fn f16_grad(a: f32, e: f32, b: f32, hit: f32) -> u16 {
    f16_bits_rne((a * e - b) - hit)
}

/// [`Elem::widen`] for f16: with F16C where the kernels may use it.
#[inline(always)]
fn f16_widen(x: &[u16], out: &mut Vec<f32>) -> bool {
    #[cfg(target_arch = "x86_64")]
    if simd::has_f16c() {
        out.resize(x.len(), 0.0);
        // SAFETY: `has_f16c` says the CPU has F16C (which implies AVX).
        unsafe { f16_widen_f16c(x, out) };
        return true;
    }
    let _ = (x, out);
    false
}

/// bits_j = f16(a·e_j - b): with F16C where the CPU has it, else `f16_bits_rne`.
#[inline(always)]
fn f16_affine(bits: &mut [u16], e: &[f32], ab: (f32, f32)) {
    #[cfg(target_arch = "x86_64")]
    if simd::has_f16c() {
        // SAFETY: as in `f16_widen`.
        return unsafe { f16_affine_f16c(bits, e, ab) };
    }
    let (a, b) = ab;
    for (o, &ev) in bits.iter_mut().zip(e) {
        *o = f16_bits_rne(a * ev - b);
    }
}

/// out = x as f32, 8 at a time with `vcvtph2ps` (exact, as `f16_to_f32`).
///
/// # Safety
/// The CPU must have AVX and F16C.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx,f16c")]
unsafe fn f16_widen_f16c(x: &[u16], out: &mut [f32]) {
    use std::arch::x86_64::{_mm256_cvtph_ps, _mm256_storeu_ps, _mm_loadu_si128};
    assert_eq!(x.len(), out.len());
    let body = x.len() / 8 * 8;
    for i in (0..body).step_by(8) {
        // SAFETY: i + 8 <= body <= len for both slices.
        unsafe {
            let h = _mm_loadu_si128(x.as_ptr().add(i).cast());
            _mm256_storeu_ps(out.as_mut_ptr().add(i), _mm256_cvtph_ps(h));
        }
    }
    for (o, &h) in out[body..].iter_mut().zip(&x[body..]) {
        *o = f16_to_f32(h);
    }
}

/// [`f16_affine`] 8 at a time: a multiply and a subtract (no FMA, as the scalar
/// loop), then `vcvtps2ph` rounding to nearest even (as `f16_bits_rne`).
///
/// # Safety
/// The CPU must have AVX and F16C.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx,f16c")]
unsafe fn f16_affine_f16c(bits: &mut [u16], e: &[f32], (a, b): (f32, f32)) {
    use std::arch::x86_64::{
        _mm256_cvtps_ph, _mm256_loadu_ps, _mm256_mul_ps, _mm256_set1_ps, _mm256_sub_ps,
        _mm_storeu_si128, _MM_FROUND_TO_NEAREST_INT,
    };
    let n = bits.len().min(e.len());
    let body = n / 8 * 8;
    let (va, vb) = (_mm256_set1_ps(a), _mm256_set1_ps(b));
    for i in (0..body).step_by(8) {
        // SAFETY: i + 8 <= body <= len for both slices.
        unsafe {
            let g = _mm256_sub_ps(_mm256_mul_ps(va, _mm256_loadu_ps(e.as_ptr().add(i))), vb);
            let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(g);
            _mm_storeu_si128(bits.as_mut_ptr().add(i).cast(), h);
        }
    }
    for (o, &ev) in bits[body..n].iter_mut().zip(&e[body..n]) {
        *o = f16_bits_rne(a * ev - b);
    }
}

/// f16 bits as f32 (exact, subnormals included), branch-free: the exponent is rebased
/// by a multiply by 2^-112, subnormals come out of a subtraction of 0.5 (M. Dukhan's
/// FP16 library, `fp16_ieee_to_fp32_value`). A NaN comes out quieted, as in `half`.
#[inline(always)]
pub(crate) fn f16_to_f32(h: u16) -> f32 {
    let w = (h as u32) << 16;
    let sign = w & 0x8000_0000;
    let two_w = w.wrapping_add(w);
    let exp_scale = f32::from_bits(0x0780_0000); // 2^-112
    let normalized = f32::from_bits((two_w >> 4) + (0xE0 << 23)) * exp_scale;
    let denormalized = f32::from_bits((two_w >> 17) | (126 << 23)) - 0.5;
    let mag = if two_w < (1 << 27) {
        denormalized
    } else {
        normalized
    };
    f32::from_bits(sign | mag.to_bits())
}

/// x rounded to the nearest f16, ties to even (subnormals, overflow to ±inf),
/// branch-free: the f32 adder does the rounding once x is scaled and biased so that
/// the f16 mantissa's last bit is its last bit (FP16's `fp16_ieee_from_fp32_value`).
/// A NaN keeps its sign and top payload bits, quieted, as `half::f16::from_f32` does.
#[inline(always)]
pub(crate) fn f16_bits_rne(x: f32) -> u16 {
    let scale_to_inf = f32::from_bits(0x7780_0000); // 2^112
    let scale_to_zero = f32::from_bits(0x0880_0000); // 2^-110
    let base = (x.abs() * scale_to_inf) * scale_to_zero;
    let w = x.to_bits();
    let shl1_w = w.wrapping_add(w);
    let sign = w & 0x8000_0000;
    let bias = (shl1_w & 0xFF00_0000).max(0x7100_0000);
    let base = f32::from_bits((bias >> 1) + 0x0780_0000) + base;
    let bits = base.to_bits();
    let nonsign = ((bits >> 13) & 0x7C00) + (bits & 0x0FFF);
    let nan = 0x7E00 | ((w >> 13) & 0x03FF);
    ((sign >> 16) | if shl1_w > 0xFF00_0000 { nan } else { nonsign }) as u16
}

/// dst = src (16-bit values), with non-temporal stores for the part of dst on whole
/// vector-sized lines where the CPU has AVX2 or AVX-512 (the gradient is not read
/// back, see [`Real::stream_copy`]); callers fence ([`store_fence`]).
#[inline(always)]
fn stream_copy_u16(dst: &mut [MaybeUninit<u16>], src: &[u16]) {
    #[cfg(target_arch = "x86_64")]
    match simd::level() {
        // SAFETY: `simd::level` reports AVX-512 only when the CPU has it.
        Level::Avx512 => return unsafe { stream_copy_u16_avx512(dst, src) },
        // SAFETY: as above, for AVX2.
        Level::Avx2 => return unsafe { stream_copy_u16_avx2(dst, src) },
        Level::Baseline => {}
    }
    dst.write_copy_of_slice(src);
}

/// [`stream_copy_u16`] with 32-byte non-temporal stores.
///
/// # Safety
/// The CPU must have AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn stream_copy_u16_avx2(dst: &mut [MaybeUninit<u16>], src: &[u16]) {
    use std::arch::x86_64::{__m256i, _mm256_loadu_si256, _mm256_stream_si256};
    assert_eq!(dst.len(), src.len());
    let n = dst.len();
    // Elements before the first 32-byte boundary of dst.
    let head = dst.as_ptr().align_offset(32).min(n);
    dst[..head].write_copy_of_slice(&src[..head]);
    let body = (n - head) / 16 * 16;
    let (d, s) = (
        dst[head..].as_mut_ptr() as *mut __m256i,
        src[head..].as_ptr(),
    );
    let mut i = 0;
    while i < body {
        // SAFETY: i + 16 <= body <= n - head keeps both in bounds; d + i/16 is 32-byte
        // aligned (head brought d there, and each step is 16 u16 = 32 bytes).
        unsafe { _mm256_stream_si256(d.add(i / 16), _mm256_loadu_si256(s.add(i).cast())) };
        i += 16;
    }
    dst[head + body..].write_copy_of_slice(&src[head + body..]);
}

/// [`stream_copy_u16`] with 64-byte non-temporal stores.
///
/// # Safety
/// The CPU must have AVX-512 F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn stream_copy_u16_avx512(dst: &mut [MaybeUninit<u16>], src: &[u16]) {
    use std::arch::x86_64::{__m512i, _mm512_loadu_si512, _mm512_stream_si512};
    assert_eq!(dst.len(), src.len());
    let n = dst.len();
    // Elements before the first 64-byte boundary of dst.
    let head = dst.as_ptr().align_offset(64).min(n);
    dst[..head].write_copy_of_slice(&src[..head]);
    let body = (n - head) / 32 * 32;
    let (d, s) = (
        dst[head..].as_mut_ptr() as *mut __m512i,
        src[head..].as_ptr(),
    );
    let mut i = 0;
    while i < body {
        // SAFETY: i + 32 <= body <= n - head keeps both in bounds; d + i/32 is 64-byte
        // aligned (head brought d there, and each step is 32 u16 = 64 bytes).
        unsafe { _mm512_stream_si512(d.add(i / 32), _mm512_loadu_si512(s.add(i).cast())) };
        i += 32;
    }
    dst[head + body..].write_copy_of_slice(&src[head + body..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// f32 bit patterns: every 997th of all 2^32 (NaNs, infinities, subnormals and
    /// both signs included), and around every bf16/f16 rounding boundary: each 16-bit
    /// value's f32, the midpoints to its neighbours (ties) and one f32 ulp either side.
    fn sweep() -> impl Iterator<Item = f32> {
        let strided = (0..=u32::MAX).step_by(997);
        let bf16_edges = (0..=u16::MAX).flat_map(|h| {
            let w = (h as u32) << 16;
            [w, w | 0x7FFF, w | 0x8000, w | 0x8001, w | 0xFFFF]
        });
        let f16_edges = (0..=u16::MAX).flat_map(|h| {
            let lo = f16::from_bits(h).to_f32();
            let hi = f16::from_bits(h.wrapping_add(1)).to_f32();
            let mid = ((lo as f64 + hi as f64) / 2.0) as f32;
            [lo, mid].into_iter().flat_map(|x| {
                let b = x.to_bits();
                [b.wrapping_sub(1), b, b.wrapping_add(1)]
            })
        });
        strided
            .chain(bf16_edges)
            .chain(f16_edges)
            .map(f32::from_bits)
    }

    fn same_f32(a: f32, b: f32) -> bool {
        a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
    }

    /// The F16C paths give the software conversions' bits: every f16 widened, and the
    /// sweep's f32 values (times 1, minus 0: exact) rounded.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn f16c_conversions_are_the_software_ones() {
        if !(std::arch::is_x86_feature_detected!("f16c")
            && std::arch::is_x86_feature_detected!("avx"))
        {
            println!("no F16C on this CPU: nothing to compare");
            return;
        }
        let all: Vec<u16> = (0..=u16::MAX).collect();
        let mut wide = vec![0f32; all.len()];
        // SAFETY: the CPU has F16C (checked above) and AVX (implied by F16C).
        unsafe { f16_widen_f16c(&all, &mut wide) };
        for (&h, &w) in all.iter().zip(&wide) {
            assert_eq!(w.to_bits(), f16_to_f32(h).to_bits(), "widen {h:#06x}");
        }
        let xs: Vec<f32> = sweep().collect();
        // Odd lengths: the 8-wide body and the scalar tail both. (1, 0) rounds the
        // sweep's values themselves (NaNs included: the same bits); (0.37, 1e-3) checks
        // the affine step (a multiply then a subtract, not an FMA).
        for ((a, b), len) in [((1.0, 0.0), xs.len()), ((0.37, 1e-3), xs.len() - 3)] {
            let mut got = vec![0u16; len];
            // SAFETY: as above.
            unsafe { f16_affine_f16c(&mut got, &xs[..len], (a, b)) };
            for (&g, &x) in got.iter().zip(&xs) {
                let want = f16_bits_rne(a * x - b);
                assert_eq!(g, want, "({a}, {b}) at {:#010x}", x.to_bits());
            }
        }
    }

    #[test]
    fn half_loads_are_exact_for_every_value() {
        for h in 0..=u16::MAX {
            let (b, f) = (bf16::from_bits(h), f16::from_bits(h));
            assert!(same_f32(bf16_to_f32(h), b.to_f32()), "bf16 {h:#06x}");
            assert!(same_f32(f16_to_f32(h), f.to_f32()), "f16 {h:#06x}");
            assert_eq!(f16_to_f32(h).is_nan(), f.is_nan());
        }
    }

    #[test]
    fn half_stores_round_to_nearest_even_as_half_does() {
        let mut n = 0usize;
        for x in sweep() {
            let (b, f) = (bf16_bits_rne(x), f16_bits_rne(x));
            assert_eq!(
                b,
                bf16::from_f32(x).to_bits(),
                "bf16 of {:#010x}",
                x.to_bits()
            );
            // The streamed bf16 gradient's rounding: subnormals to a zero of their
            // sign, everything else as above.
            let subnormal = x.is_subnormal();
            let ftz = bf16_bits_rne_ftz(x);
            if subnormal {
                assert_eq!(
                    ftz,
                    if x < 0.0 { 0x8000 } else { 0 },
                    "{:#010x}",
                    x.to_bits()
                );
            } else {
                assert_eq!(ftz, b, "bf16 ftz of {:#010x}", x.to_bits());
            }
            let want = f16::from_f32(x);
            if x.is_nan() {
                assert!(
                    f16::from_bits(f).is_nan(),
                    "f16 of NaN {:#010x}",
                    x.to_bits()
                );
            } else {
                assert_eq!(f, want.to_bits(), "f16 of {:#010x}", x.to_bits());
            }
            n += 1;
        }
        assert!(n > 4_000_000);
    }
}
