//! The fused cross-entropy row kernel, on plain slices.
//!
//! One call handles rows of logits x [N, V] (f32, bf16, f16 or f64) against targets [N]
//! and, when asked, writes the gradient d(loss)/d(x) [N, V] once. Per row:
//!
//! * pass A reads the row from memory: max m (+inf makes it +inf; NaN is caught by the
//!   sum of pass B, which it makes NaN);
//! * pass B re-reads it from L2: e_j = exp(y_j - m), s = Σ e_j, and Σ (m - y_j) for
//!   label smoothing; e_j goes to a scratch row (L2) when the gradient is a separate
//!   row of the arithmetic type without a soft-cap, else into the gradient row itself
//!   (in place, as the linear CE's chunks use it) or a scratch row (bf16/f16, soft-cap);
//! * pass C writes g_j = scale · ((1 + 2z·lse)·e_j/s - ε/V - (1-ε)·[j = t]) (times
//!   1 - (y_j/c)² under a soft-cap): streamed with non-temporal stores from the scratch
//!   row (so the gradient's lines are never read: 8 bytes of traffic per element, and
//!   the destination may be uninitialised, see `run_fresh`), or rewritten in place.
//!
//! The row (V·4 bytes, 200 KB at V = 50304) stays in the per-core L2 between the
//! passes, so memory sees one read of the logits and one write of the gradient: the
//! llm.c / Liger-Kernel scheme. On the streamed path the rows overlap as a software
//! pipeline: pass B of row i also prefetches row i+1 and writes, block by block, the
//! streamed gradient of row i-1 (`pass_exp_pipelined`), so the memory reads, the
//! exponentials and the gradient's stores run together instead of taking turns
//! (with the register-streamed gradient of `stream_affine`, 1.35–1.5x faster at
//! V ≥ 8192 than the one-row-after-the-other kernel of sitting 4, BENCHMARKS.md).
//! Arithmetic is in f32 (f64 for f64 logits); the inner loops work on `LANES`
//! independent accumulators so that LLVM vectorises them, and `Job::dispatch`
//! re-compiles the same code for AVX-512 / AVX2 when the CPU has them (the plain build
//! is the scalar/SSE2 fallback).
//!
//! Short rows (V ≤ 256, f32, no soft-cap) on AVX-512 take [`short_rows`] instead: a row
//! fits in registers, so the scratch row, the staging block and the pipeline, which
//! cost more than the arithmetic at V = 256, are not needed. Same bits as this code.
//!
//! Determinism: every row is computed by the same sequential code whatever thread runs
//! it, and the caller reduces the per-row losses in row order, so results are bitwise
//! identical for any thread count.

use crate::cpu::as_uninit;
#[cfg(target_arch = "x86_64")]
mod short_rows;
use half::{bf16, f16};
use rayon::prelude::*;
use std::mem::MaybeUninit;
use std::ops::{Add, Div, Mul, Neg, Sub};

/// Independent accumulators per inner loop: 16 f32 = one AVX-512 register.
const LANES: usize = 16;

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
        if simd_level() == 2 {
            // SAFETY: AVX-512 F was detected at run time.
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
        // line-aligned, see `line_row`): otherwise every load of e would straddle
        // two lines, which measured slower than staging the values in `buf`.
        #[cfg(target_arch = "x86_64")]
        if simd_level() == 2 && (dst.as_ptr() as usize) % 64 == (e.as_ptr() as usize) % 64 {
            // SAFETY: AVX-512 F was detected at run time.
            return unsafe { stream_affine_avx512(dst, e, ab, t, hit) };
        }
        affine_via_buf(dst, e, ab, t, hit, buf)
    }
}

/// [`Real::stream_affine`] for f32 on AVX-512: each aligned 64-byte line of `dst` is
/// computed in a register and stored non-temporally, with no staging row (whose extra
/// stores queued up behind the streaming ones: ~10% of the kernel at V = 256). The
/// same operations as `affine_via_buf` (a multiply then a subtract, no FMA), so the
/// same bits.
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

use crate::fastmath::exp_f32_nonpos;

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

impl Elem<f32> for f32 {
    #[inline(always)]
    fn load(self) -> f32 {
        self
    }
    #[inline(always)]
    fn store(x: f32) -> f32 {
        x
    }
    fn as_real_mut(s: &mut [f32]) -> Option<&mut [f32]> {
        Some(s)
    }
    const IS_REAL: bool = true;
    fn as_real_uninit(s: &mut [MaybeUninit<f32>]) -> Option<&mut [MaybeUninit<f32>]> {
        Some(s)
    }
}
impl Elem<f64> for f64 {
    #[inline(always)]
    fn load(self) -> f64 {
        self
    }
    #[inline(always)]
    fn store(x: f64) -> f64 {
        x
    }
    fn as_real_mut(s: &mut [f64]) -> Option<&mut [f64]> {
        Some(s)
    }
    const IS_REAL: bool = true;
    fn as_real_uninit(s: &mut [MaybeUninit<f64>]) -> Option<&mut [MaybeUninit<f64>]> {
        Some(s)
    }
}
impl Elem<f32> for bf16 {
    #[inline(always)]
    fn load(self) -> f32 {
        self.to_f32()
    }
    #[inline(always)]
    fn store(x: f32) -> bf16 {
        bf16::from_f32(x)
    }
    fn as_real_mut(_: &mut [bf16]) -> Option<&mut [f32]> {
        None
    }
    const IS_REAL: bool = false;
    fn as_real_uninit(_: &mut [MaybeUninit<bf16>]) -> Option<&mut [MaybeUninit<f32>]> {
        None
    }
}
impl Elem<f32> for f16 {
    #[inline(always)]
    fn load(self) -> f32 {
        self.to_f32()
    }
    #[inline(always)]
    fn store(x: f32) -> f16 {
        f16::from_f32(x)
    }
    fn as_real_mut(_: &mut [f16]) -> Option<&mut [f32]> {
        None
    }
    const IS_REAL: bool = false;
    fn as_real_uninit(_: &mut [MaybeUninit<f16>]) -> Option<&mut [MaybeUninit<f32>]> {
        None
    }
}

/// What every row needs to know besides its data.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Params {
    pub v: usize,
    pub ignore_index: Option<u32>,
    pub label_smoothing: f64,
    pub z_loss: f64,
    pub softcap: Option<f64>,
}

/// How d(loss)/d(row loss) is given: one factor for all rows (mean: 1/count, sum: 1),
/// or one per row (reduction none, from the upstream gradient).
#[derive(Debug, Clone, Copy)]
pub(crate) enum RowScale<'a> {
    Uniform(f64),
    PerRow(&'a [f64]),
}

impl RowScale<'_> {
    /// The factor of row `i`.
    #[inline(always)]
    fn of_row(self, i: usize) -> f64 {
        match self {
            RowScale::Uniform(s) => s,
            RowScale::PerRow(s) => s[i],
        }
    }
}

/// Whether the first maximum of row `x` (whose max is `m`) is at `t`: argmax == target
/// with ties going to the first index, as torch.argmax.
#[inline(always)]
fn first_max_at<T: Elem<F>, F: Real>(x: &[T], t: usize, m: F) -> bool {
    x[t].load() == m && !x[..t].iter().any(|&xv| xv.load() == m)
}

/// Per-row results. Ignored rows have loss 0, lse 0, correct false.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct RowOut {
    pub loss: f64,
    pub lse: f64,
    pub correct: bool,
    pub counted: bool,
    /// 0 ok; 1 NaN or +inf in the row; 2 every logit -inf; 3 target out of range.
    pub err: u8,
}

/// Errors found by the kernel, reported for the first offending row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum KernelError {
    NonFinite { row: usize },
    AllNegInf { row: usize },
    TargetOutOfRange { row: usize, target: u32, v: usize },
}

impl std::fmt::Display for KernelError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KernelError::NonFinite { row } => {
                write!(f, "cross_entropy: NaN or +inf in the logits of row {row}")
            }
            KernelError::AllNegInf { row } => {
                write!(f, "cross_entropy: every logit of row {row} is -inf")
            }
            KernelError::TargetOutOfRange { row, target, v } => {
                write!(
                    f,
                    "cross_entropy: target {target} of row {row} is out of range for V = {v}"
                )
            }
        }
    }
}

/// Scratch rows reused across the rows of one rayon job.
struct Scratch<F> {
    /// Soft-capped logits y = c·tanh(x/c).
    y: Vec<F>,
    /// exp(y - m), when the gradient row cannot hold it or the gradient is streamed.
    e: Vec<F>,
    /// The previous streamed row's exp(y - m), while its pass C is pending.
    e_prev: Vec<F>,
    /// One block of the streamed gradient, staged (see `Real::stream_affine`).
    blk: Vec<F>,
}

impl<F: Real> Scratch<F> {
    fn new() -> Self {
        Self {
            y: Vec::new(),
            e: Vec::new(),
            e_prev: Vec::new(),
            blk: vec![F::ZERO; STREAM_BLOCK],
        }
    }
}

/// Pass A: max of the row. NaN entries are skipped here (`v > max` is false for them)
/// and caught after pass B, where they make the sum NaN; +inf makes the max +inf.
#[inline(always)]
fn pass_max<T: Elem<F>, F: Real>(x: &[T]) -> F {
    let mut mx = [-F::INF; LANES];
    let mut it = x.chunks_exact(LANES);
    for c in &mut it {
        for l in 0..LANES {
            let v = c[l].load();
            mx[l] = if v > mx[l] { v } else { mx[l] };
        }
    }
    for (l, &t) in it.remainder().iter().enumerate() {
        let v = t.load();
        mx[l] = if v > mx[l] { v } else { mx[l] };
    }
    let mut m = mx[0];
    for &v in &mx[1..] {
        m = if v > m { v } else { m };
    }
    m
}

/// Pass B: e_j = exp(y_j - m) (stored in `e` when given), returns (Σ e_j, Σ (m - y_j)).
/// The second sum is only accumulated when `want_dsum` (label smoothing). `next` is
/// the row that comes after this one, prefetched as this one is read.
///
/// With `e`, the exponentials are written first and summed in a second loop over `e`
/// (in L1/L2): summing while storing made LLVM keep the 16 accumulators on the stack,
/// a store-to-load chain that cost ~20% of the kernel at V = 256.
#[inline(always)]
fn pass_exp<T: Elem<F>, F: Real>(
    x: &[T],
    m: F,
    e: Option<&mut [F]>,
    want_dsum: bool,
    next: &[T],
) -> (F, F) {
    let mut s = [F::ZERO; LANES];
    let mut ds = [F::ZERO; LANES];
    match e {
        Some(e) => {
            exp_block(x, m, e, &mut s, Prefetch::of(next, 0));
            if want_dsum {
                dsum_lanes(x, m, &mut ds);
            }
        }
        None => {
            let pf = Prefetch::of(next, 0);
            let mut xi = x.chunks_exact(LANES);
            for (k, xc) in (&mut xi).enumerate() {
                pf.chunk::<T>(k);
                let mut ev = [F::ZERO; LANES];
                for l in 0..LANES {
                    ev[l] = F::exp_nonpos(xc[l].load() - m);
                }
                for l in 0..LANES {
                    s[l] = s[l] + ev[l];
                }
            }
            for (l, xv) in xi.remainder().iter().enumerate() {
                s[l] = s[l] + F::exp_nonpos(xv.load() - m);
            }
            if want_dsum {
                dsum_lanes(x, m, &mut ds);
            }
        }
    }
    (reduce_lanes(s), reduce_lanes(ds))
}

/// Pairwise over the lanes: the same fixed order every time.
#[inline(always)]
fn reduce_lanes<F: Real>(mut s: [F; LANES]) -> F {
    let mut w = LANES;
    while w > 1 {
        w /= 2;
        for l in 0..w {
            s[l] = s[l] + s[l + w];
        }
    }
    s[0]
}

/// ds[l] += Σ (m - y_j) over the lanes of `x` (label smoothing's mean term).
#[inline(always)]
fn dsum_lanes<T: Elem<F>, F: Real>(x: &[T], m: F, ds: &mut [F; LANES]) {
    let mut xi = x.chunks_exact(LANES);
    for xc in &mut xi {
        for l in 0..LANES {
            ds[l] = ds[l] + (m - xc[l].load());
        }
    }
    for (l, xv) in xi.remainder().iter().enumerate() {
        ds[l] = ds[l] + (m - xv.load());
    }
}

/// Pass B over a block of a row: e_j = exp(x_j - m) into `e`, added into the lane
/// sums `s`. Blocks of a multiple of `LANES` elements (with any remainder only in the
/// last) sum in exactly the order of one call over the whole row.
#[inline(always)]
fn exp_block<T: Elem<F>, F: Real>(x: &[T], m: F, e: &mut [F], s: &mut [F; LANES], pf: Prefetch) {
    debug_assert_eq!(x.len(), e.len());
    let mut xi = x.chunks_exact(LANES);
    let mut ei = e.chunks_exact_mut(LANES);
    for (k, (xc, ec)) in (&mut xi).zip(&mut ei).enumerate() {
        pf.chunk::<T>(k);
        for l in 0..LANES {
            ec[l] = F::exp_nonpos(xc[l].load() - m);
        }
    }
    // Summed from `e` (see `pass_exp`).
    let mut ei = e.chunks_exact(LANES);
    for ec in &mut ei {
        for l in 0..LANES {
            s[l] = s[l] + ec[l];
        }
    }
    let r0 = x.len() / LANES * LANES;
    for (l, (xv, ev)) in xi.remainder().iter().zip(&mut e[r0..]).enumerate() {
        *ev = F::exp_nonpos(xv.load() - m);
        s[l] = s[l] + *ev;
    }
}

/// The next row's bytes from `off` on, to be brought into L2 a line per `LANES`
/// elements read here, so that its read from memory overlaps this row's arithmetic
/// instead of following it. Empty (a no-op) for the last row.
#[derive(Clone, Copy)]
struct Prefetch {
    base: *const u8,
    len: usize,
}

impl Prefetch {
    #[inline(always)]
    fn of<T>(next: &[T], first_elem: usize) -> Self {
        let sz = std::mem::size_of::<T>();
        let bytes = std::mem::size_of_val(next);
        let off = (first_elem * sz).min(bytes);
        Self {
            base: (next.as_ptr() as *const u8).wrapping_add(off),
            len: bytes - off,
        }
    }

    /// Prefetches the bytes of chunk `k` (elements k·LANES .. (k+1)·LANES).
    #[inline(always)]
    fn chunk<T>(self, k: usize) {
        let sz = LANES * std::mem::size_of::<T>();
        prefetch_range(self.base, self.len, k * sz, sz);
    }
}

/// Asks for bytes [off, off + len) of the `total`-byte block at `base` to be brought
/// into L2 (64-byte lines), so that the next row's read from memory overlaps this
/// row's arithmetic instead of following it.
#[inline(always)]
fn prefetch_range(base: *const u8, total: usize, off: usize, len: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        let mut o = off;
        while o < off + len && o < total {
            // SAFETY: prefetch never faults; the address lies inside the block.
            unsafe {
                std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T1 }>(
                    base.wrapping_add(o) as *const i8,
                )
            };
            o += 64;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (base, total, off, len);
}

/// Pass C, in place: g_j = a·e_j - b, times the soft-cap chain factor 1 - (y_j/c)².
#[inline(always)]
fn pass_grad_inplace<F: Real>(g: &mut [F], a: F, b: F, capped: Option<(&[F], F)>) {
    match capped {
        None => {
            for gv in g.iter_mut() {
                *gv = a * *gv - b;
            }
        }
        Some((y, inv_c)) => {
            for (gv, &yv) in g.iter_mut().zip(y) {
                let u = yv * inv_c;
                *gv = (a * *gv - b) * (F::ONE - u * u);
            }
        }
    }
}

/// Elements per block of the streamed pass C: 4 KiB of f32, so the block stays in L1
/// between its computation and its streaming store.
const STREAM_BLOCK: usize = 1024;

/// A streamed row whose pass C is still to do: its gradient row, to be written as
/// g_j = a·e_j - b (minus `hit` at the target t) from the exponentials that pass B
/// left in the scratch row `Scratch::e_prev`. Kept so that the next row's pass B can
/// write it (see `pass_exp_pipelined`).
struct Pending<'g, F> {
    g: &'g mut [MaybeUninit<F>],
    a: F,
    b: F,
    t: usize,
    hit: F,
}

impl<F: Real> Pending<'_, F> {
    /// Pass C for elements `j0 .. j0 + e.len()` of the row: computed into `buf` (L1)
    /// and written to the gradient with non-temporal stores. Pass B writing e_j into
    /// the gradient itself and pass C rescaling it there would pull every gradient line
    /// into the cache before overwriting it: 12 bytes of memory traffic per element
    /// instead of 8.
    #[inline(always)]
    fn write_block(&mut self, j0: usize, e: &[F], buf: &mut [F]) {
        let t = (j0..j0 + e.len()).contains(&self.t).then(|| self.t - j0);
        let g = &mut self.g[j0..j0 + e.len()];
        F::stream_affine(g, e, (self.a, self.b), t, self.hit, buf);
    }

    /// The whole pass C, a block at a time.
    #[inline(always)]
    fn write(mut self, e: &[F], buf: &mut [F]) {
        for (k, ec) in e.chunks(STREAM_BLOCK).enumerate() {
            self.write_block(k * STREAM_BLOCK, ec, buf);
        }
    }
}

/// Pass B of this row fused with pass C of the previous one, a block at a time:
/// e_j = exp(x_j - m) into `e` (lane sums as `pass_exp`, so the same bits), and,
/// between the blocks, the previous row's streamed gradient block from `e_prev`.
/// Done one after the other, the row's arithmetic and its gradient's stores each left
/// the memory or the vector units idle; interleaved, the stores drain while the
/// exponentials are computed (and the next row, prefetched, arrives meanwhile).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn pass_exp_pipelined<T: Elem<F>, F: Real>(
    x: &[T],
    m: F,
    e: &mut [F],
    want_dsum: bool,
    next: &[T],
    mut prev: Option<(Pending<'_, F>, &[F])>,
    buf: &mut [F],
) -> (F, F) {
    let mut s = [F::ZERO; LANES];
    for (k, (xb, eb)) in x
        .chunks(STREAM_BLOCK)
        .zip(e.chunks_mut(STREAM_BLOCK))
        .enumerate()
    {
        let j0 = k * STREAM_BLOCK;
        exp_block(xb, m, eb, &mut s, Prefetch::of(next, j0));
        if let Some((pend, e_prev)) = prev.as_mut() {
            pend.write_block(j0, &e_prev[j0..j0 + xb.len()], buf);
        }
    }
    let mut ds = [F::ZERO; LANES];
    if want_dsum {
        dsum_lanes(x, m, &mut ds);
    }
    (reduce_lanes(s), reduce_lanes(ds))
}

/// Pass C into a narrower gradient type.
#[inline(always)]
fn pass_grad_convert<F: Real, G: Elem<F>>(
    e: &[F],
    g: &mut [G],
    a: F,
    b: F,
    capped: Option<(&[F], F)>,
) {
    match capped {
        None => {
            for (gv, &ev) in g.iter_mut().zip(e) {
                *gv = G::store(a * ev - b);
            }
        }
        Some((y, inv_c)) => {
            for ((gv, &ev), &yv) in g.iter_mut().zip(e).zip(y) {
                let u = yv * inv_c;
                *gv = G::store((a * ev - b) * (F::ONE - u * u));
            }
        }
    }
}

/// Pass B in place: the row holds y on entry and e_j = exp(y_j - m) on exit.
#[inline(always)]
fn pass_exp_inplace<F: Real>(xe: &mut [F], m: F, want_dsum: bool) -> (F, F) {
    let mut s = [F::ZERO; LANES];
    let mut ds = [F::ZERO; LANES];
    let mut it = xe.chunks_exact_mut(LANES);
    for c in &mut it {
        for l in 0..LANES {
            let d = m - c[l];
            let ev = F::exp_nonpos(-d);
            c[l] = ev;
            s[l] = s[l] + ev;
            if want_dsum {
                ds[l] = ds[l] + d;
            }
        }
    }
    for (l, xv) in it.into_remainder().iter_mut().enumerate() {
        let d = m - *xv;
        *xv = F::exp_nonpos(-d);
        s[l] = s[l] + *xv;
        ds[l] = ds[l] + d;
    }
    (reduce_lanes(s), reduce_lanes(ds))
}

/// Where a row's data comes from and its gradient goes.
pub(crate) enum RowIo<'a, T, F> {
    /// Read the logits, write the gradient (if any) to a separate row.
    Separate(&'a [T], Option<&'a mut [T]>),
    /// The row holds the logits on entry and the gradient on exit (T must be the
    /// arithmetic type).
    InPlace(&'a mut [T]),
    /// Read the logits, stream the gradient into uninitialised memory of the
    /// arithmetic type, writing every element (T = F, no soft-cap).
    Fresh(&'a [T], &'a mut [MaybeUninit<F>]),
}

/// One row: loss, lse, argmax-correct and, if a gradient row is given, the gradient
/// scaled by `scale`. Soft-capping happens here.
///
/// A streamed gradient row (see `RowIo`) is left in `pending`, to be written during the
/// next row's pass B (`pass_exp_pipelined`); a row that is not streamed first writes
/// what is pending. The caller flushes `pending` after its last row ([`flush`]).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn row<'g, T: Elem<F>, F: Real>(
    io: RowIo<'g, T, F>,
    next: &[T],
    target: u32,
    p: &Params,
    scale: F,
    scratch: &mut Scratch<F>,
    pending: &mut Option<Pending<'g, F>>,
) -> RowOut {
    let v = p.v;
    let (x_ro, grad, fresh): (Option<&[T]>, Option<&mut [T]>, _) = match io {
        RowIo::Separate(x, g) => (Some(x), g, None),
        RowIo::InPlace(g) => (None, Some(g), None),
        RowIo::Fresh(x, g) => (Some(x), None, Some(g)),
    };
    let in_place = x_ro.is_none();
    let streamed =
        fresh.is_some() || (grad.is_some() && T::IS_REAL && !in_place && p.softcap.is_none());
    if !streamed || p.ignore_index == Some(target) || target as usize >= v {
        flush(pending, scratch);
    }
    if p.ignore_index == Some(target) {
        if let Some(g) = grad {
            g.fill(T::store(F::ZERO));
        }
        if let Some(g) = fresh {
            g.fill(MaybeUninit::new(F::ZERO));
        }
        return RowOut::default();
    }
    if target as usize >= v {
        return RowOut {
            err: 3,
            ..RowOut::default()
        };
    }
    let t = target as usize;
    let want_dsum = p.label_smoothing != 0.0;

    // Under a soft-cap the kernel works on y = c·tanh(x/c), materialised once.
    let mut y = std::mem::take(&mut scratch.y);
    let mut e_scratch = std::mem::take(&mut scratch.e);
    let inv_cap = p.softcap.map(|c| F::ONE / F::from_f64(c));

    // Everything that reads the logits before the first write.
    let (m, y_t, correct, any_nan) = {
        let xs: &[T] = match x_ro {
            Some(x) => x,
            None => grad.as_deref().expect("in-place rows carry data"),
        };
        if let (Some(c), Some(inv_c)) = (p.softcap, inv_cap) {
            let c = F::from_f64(c);
            y.clear();
            y.extend(xs.iter().map(|&xv| c * (xv.load() * inv_c).tanh()));
            let m = pass_max::<F, F>(&y);
            let y_t = y[t];
            let correct = first_max_at::<F, F>(&y, t, m);
            // Only looked for when the max says the row is all -inf (or NaN).
            let any_nan = m == -F::INF && y.iter().any(|&v| v.is_nan());
            (m, y_t, correct, any_nan)
        } else {
            let m = pass_max::<T, F>(xs);
            let y_t = xs[t].load();
            let correct = first_max_at::<T, F>(xs, t, m);
            let any_nan = m == -F::INF && xs.iter().any(|&xv| xv.load().is_nan());
            (m, y_t, correct, any_nan)
        }
    };
    let err = if m == F::INF || any_nan {
        1
    } else if m == -F::INF {
        2
    } else {
        0
    };
    if err != 0 {
        scratch.y = y;
        scratch.e = e_scratch;
        flush(pending, scratch);
        return RowOut {
            err,
            ..RowOut::default()
        };
    }

    // Separate rows of the arithmetic type without a soft-cap: pass B parks e_j in the
    // scratch row (L2), pass C streams the gradient during the next row's pass B (see `Pending`).
    let (mut grad, stream_to) = match (fresh, grad) {
        (Some(f), _) => (None, Some(f)),
        (None, Some(g)) if streamed => {
            let gr = T::as_real_mut(g).expect("T is the arithmetic type");
            (None, Some(as_uninit(gr)))
        }
        (None, g) => (g, None),
    };
    let (s, dsum) = if stream_to.is_some() {
        e_scratch.resize(v + 64 / std::mem::size_of::<F>(), F::ZERO);
        let x = x_ro.expect("streamed rows are separate");
        let prev = pending
            .take()
            .map(|pd| (pd, &scratch.e_prev[line_row(&scratch.e_prev, v)]));
        let row = line_row(&e_scratch, v);
        let e = &mut e_scratch[row];
        pass_exp_pipelined::<T, F>(x, m, e, want_dsum, next, prev, &mut scratch.blk)
    } else {
        match grad.as_deref_mut() {
            None => match inv_cap {
                Some(_) => pass_exp::<F, F>(&y, m, None, want_dsum, &[]),
                None => pass_exp::<T, F>(
                    x_ro.expect("no gradient, so not in place"),
                    m,
                    None,
                    want_dsum,
                    next,
                ),
            },
            Some(g) => {
                // Where pass B parks e_j: the gradient row itself when it is of the
                // arithmetic type, else the scratch row.
                let e_row: &mut [F] = match T::as_real_mut(g) {
                    Some(gr) => gr,
                    None => {
                        e_scratch.resize(v, F::ZERO);
                        &mut e_scratch[..]
                    }
                };
                match (inv_cap, x_ro) {
                    (Some(_), _) => pass_exp::<F, F>(&y, m, Some(e_row), want_dsum, &[]),
                    (None, Some(x)) => pass_exp::<T, F>(x, m, Some(e_row), want_dsum, next),
                    (None, None) => pass_exp_inplace(e_row, m, want_dsum),
                }
            }
        }
    };
    // A NaN logit (skipped by pass A) made the sum NaN.
    if s.is_nan() {
        scratch.y = y;
        scratch.e = e_scratch;
        return RowOut {
            err: 1,
            ..RowOut::default()
        };
    }
    let chain = inv_cap
        .map(|inv_c| F::ONE - (y_t * inv_c) * (y_t * inv_c))
        .unwrap_or(F::ONE);
    let RowScalars {
        loss,
        lse,
        a,
        b,
        hit,
    } = row_scalars(m, y_t, s, dsum, p, scale, chain);
    if let Some(g) = stream_to {
        *pending = Some(Pending { g, a, b, t, hit });
        std::mem::swap(&mut e_scratch, &mut scratch.e_prev);
    } else if let Some(g) = grad {
        let cap = inv_cap.map(|inv_c| (&y[..], inv_c));
        match T::as_real_mut(g) {
            Some(gr) => {
                pass_grad_inplace(gr, a, b, cap);
                gr[t] = gr[t] - hit;
            }
            None => {
                debug_assert!(!in_place, "in-place rows are of the arithmetic type");
                pass_grad_convert(&e_scratch, g, a, b, cap);
                // The target entry from F, not a subtraction in G's precision.
                g[t] = T::store((a * e_scratch[t] - b) * chain - hit);
            }
        }
    }
    scratch.y = y;
    scratch.e = e_scratch;
    RowOut {
        loss: loss.to_f64(),
        lse: lse.to_f64(),
        correct,
        counted: true,
        err: 0,
    }
}

/// What a row's loss and gradient need besides its exponentials e_j.
struct RowScalars<F> {
    loss: F,
    lse: F,
    /// g_j = a·e_j - b, minus `hit` at the target (times the soft-cap's chain factor).
    a: F,
    b: F,
    hit: F,
}

/// The row's loss, lse and gradient coefficients from its max m, target logit y_t,
/// s = Σ e_j and dsum = Σ (m - y_j) (used only under label smoothing); `chain` is the
/// soft-cap's 1 - (y_t/c)² at the target (1 without one). One function for every path
/// that computes rows, so that they give the same bits.
#[inline(always)]
fn row_scalars<F: Real>(
    m: F,
    y_t: F,
    s: F,
    dsum: F,
    p: &Params,
    scale: F,
    chain: F,
) -> RowScalars<F> {
    let eps = F::from_f64(p.label_smoothing);
    let z = F::from_f64(p.z_loss);
    let ln_s = s.ln();
    let lse = m + ln_s;
    let vf = F::from_f64(p.v as f64);
    // loss = lse - (1-ε)·y_t - ε·mean(y) + z·lse², arranged so that only
    // non-negative quantities are summed.
    let mut loss = ln_s + (F::ONE - eps) * (m - y_t);
    if p.label_smoothing != 0.0 {
        loss = loss + eps * (dsum / vf);
    }
    if p.z_loss != 0.0 {
        loss = loss + z * lse * lse;
    }
    RowScalars {
        loss,
        lse,
        // Without a z-loss the factor 1 + 2z·lse is exactly 1 (lse is finite here):
        // the same bits without waiting for the logarithm.
        a: if p.z_loss == 0.0 {
            scale / s
        } else {
            scale * (F::ONE + (z + z) * lse) / s
        },
        b: scale * eps / vf,
        hit: scale * (F::ONE - eps) * chain,
    }
}

/// Where a row of `v` exponentials sits in a scratch buffer of v + 64/size values: from
/// its first 64-byte boundary, so that pass B's vector stores never straddle two lines
/// and pass C can stream a 64-byte-aligned gradient row straight from registers
/// (`Real::stream_affine`). A function of the buffer's address, so a pending row finds
/// its exponentials again in `Scratch::e_prev` after the swap.
#[inline(always)]
fn line_row<F>(e: &[F], v: usize) -> std::ops::Range<usize> {
    let start = e
        .as_ptr()
        .align_offset(64)
        .min(64 / std::mem::size_of::<F>());
    start..start + v
}

/// Writes the pending streamed row (pass C), if any.
#[inline(always)]
fn flush<F: Real>(pending: &mut Option<Pending<'_, F>>, scratch: &mut Scratch<F>) {
    if let Some(pd) = pending.take() {
        let e_prev = &scratch.e_prev[line_row(&scratch.e_prev, pd.g.len())];
        pd.write(e_prev, &mut scratch.blk);
    }
}

/// Rows per rayon job: about 64K elements, so that small-V cases amortise the job
/// overhead, but at least 8 rows while that leaves 4 jobs per thread, so that large-V
/// rows still pipeline (a job's last row gets no next row to write its gradient
/// during). Results do not depend on it (rows are independent and reduced in order
/// afterwards).
fn rows_per_job(n: usize, v: usize) -> usize {
    let by_size = 65_536 / v.max(1);
    let by_spread = n / (4 * rayon::current_num_threads()).max(1);
    by_size.max(by_spread.min(8)).max(1)
}

/// Where the gradient rows of a run go.
enum Dest<'a, T, F> {
    /// No gradient (forward only).
    Nothing,
    /// Initialised rows of T: a separate buffer, or the logits themselves (in place).
    Rows(&'a mut [T]),
    /// Uninitialised rows of the arithmetic type, every element of which the kernel
    /// writes when it succeeds.
    Fresh(&'a mut [MaybeUninit<F>]),
}

/// Runs the kernel over all rows of `x` [N, V] (row-major, contiguous).
///
/// `grad`, when given, is [N, V] and receives scale_i · d(row loss_i)/d(x_i).
/// Returns one `RowOut` per row, or the first row's error.
pub(crate) fn run<T: Elem<F>, F: Real>(
    x: &[T],
    targets: &[u32],
    p: &Params,
    scale: RowScale<'_>,
    grad: Option<&mut [T]>,
) -> Result<Vec<RowOut>, KernelError> {
    assert_eq!(x.len(), targets.len() * p.v, "logits are not [N, V]");
    let dest = match grad {
        Some(g) => Dest::Rows(g),
        None => Dest::Nothing,
    };
    run_rows(Some(x), targets, p, scale, dest)
}

/// [`run`] with the gradient written into uninitialised memory `grad` [N, V] of the
/// arithmetic type (f32 or f64 logits, no soft-cap): on `Ok`, every element of it has
/// been written, so a caller can allocate it without zero-filling. On `Err` it is
/// partly written.
pub(crate) fn run_fresh<T: Elem<F>, F: Real>(
    x: &[T],
    targets: &[u32],
    p: &Params,
    scale: RowScale<'_>,
    grad: &mut [MaybeUninit<F>],
) -> Result<Vec<RowOut>, KernelError> {
    assert!(
        T::IS_REAL && p.softcap.is_none(),
        "run_fresh: f32/f64, no soft-cap"
    );
    assert_eq!(x.len(), targets.len() * p.v, "logits are not [N, V]");
    run_rows(Some(x), targets, p, scale, Dest::Fresh(grad))
}

/// [`run`] with the gradient written over the logits: `xg` [N, V] holds the logits on
/// entry and scale_i · d(row loss_i)/d(x_i) on exit. For buffers the caller owns (the
/// chunked linear cross-entropy), so that a chunk needs one [rows, V] buffer, not two.
pub(crate) fn run_in_place<F: Real>(
    xg: &mut [F],
    targets: &[u32],
    p: &Params,
    scale: RowScale<'_>,
) -> Result<Vec<RowOut>, KernelError> {
    run_rows::<F, F>(None, targets, p, scale, Dest::Rows(xg))
}

fn run_rows<T: Elem<F>, F: Real>(
    x: Option<&[T]>,
    targets: &[u32],
    p: &Params,
    scale: RowScale<'_>,
    data: Dest<'_, T, F>,
) -> Result<Vec<RowOut>, KernelError> {
    let v = p.v;
    let n = targets.len();
    let mut outs = vec![RowOut::default(); n];
    let rpj = rows_per_job(n, v);
    let job = Job {
        x,
        targets,
        p,
        scale,
    };
    match data {
        Dest::Rows(g) => {
            assert_eq!(g.len(), n * v, "gradient is not [N, V]");
            outs.par_chunks_mut(rpj)
                .zip(g.par_chunks_mut(rpj * v))
                .enumerate()
                .for_each_init(Scratch::<F>::new, |sc, (j, (o, gc))| {
                    job.dispatch(j * rpj, o, Dest::Rows(gc), sc)
                });
        }
        Dest::Fresh(g) => {
            assert_eq!(g.len(), n * v, "gradient is not [N, V]");
            outs.par_chunks_mut(rpj)
                .zip(g.par_chunks_mut(rpj * v))
                .enumerate()
                .for_each_init(Scratch::<F>::new, |sc, (j, (o, gc))| {
                    job.dispatch(j * rpj, o, Dest::Fresh(gc), sc)
                });
        }
        Dest::Nothing => {
            outs.par_chunks_mut(rpj)
                .enumerate()
                .for_each_init(Scratch::<F>::new, |sc, (j, o)| {
                    job.dispatch(j * rpj, o, Dest::Nothing, sc)
                });
        }
    }
    for (i, o) in outs.iter().enumerate() {
        match o.err {
            0 => {}
            1 => return Err(KernelError::NonFinite { row: i }),
            2 => return Err(KernelError::AllNegInf { row: i }),
            _ => {
                return Err(KernelError::TargetOutOfRange {
                    row: i,
                    target: targets[i],
                    v,
                })
            }
        }
    }
    Ok(outs)
}

/// The inputs shared by every rayon job of one run.
struct Job<'a, T> {
    /// The logits [N, V], or `None` when they are in the data rows (in place).
    x: Option<&'a [T]>,
    targets: &'a [u32],
    p: &'a Params,
    scale: RowScale<'a>,
}

impl<T> Job<'_, T> {
    /// Rows `i0 .. i0 + outs.len()`; `data` (gradient or in-place rows) holds exactly
    /// those rows.
    #[inline(always)]
    fn rows<F: Real>(
        &self,
        i0: usize,
        outs: &mut [RowOut],
        data: Dest<'_, T, F>,
        sc: &mut Scratch<F>,
    ) where
        T: Elem<F>,
    {
        let v = self.p.v;
        let scale_of = |i: usize| F::from_f64(self.scale.of_row(i));
        // The row after i (which this thread most likely takes next), for prefetching.
        // (Prefetching further ahead made no difference, even at V = 256.)
        let next_of = |i: usize| -> &[T] {
            match self.x {
                Some(x) if (i + 2) * v <= x.len() => &x[(i + 1) * v..(i + 2) * v],
                _ => &[],
            }
        };
        // A streamed row's gradient is written during the next row's pass B.
        let mut pending = None;
        match data {
            Dest::Rows(g) => {
                for (k, (o, gr)) in outs.iter_mut().zip(g.chunks_exact_mut(v)).enumerate() {
                    let i = i0 + k;
                    let io = match self.x {
                        Some(x) => RowIo::Separate(&x[i * v..(i + 1) * v], Some(gr)),
                        None => RowIo::InPlace(gr),
                    };
                    let (t, sc_i) = (self.targets[i], scale_of(i));
                    *o = row(io, next_of(i), t, self.p, sc_i, sc, &mut pending);
                }
            }
            Dest::Fresh(g) => {
                let x = self.x.expect("fresh rows are separate");
                for (k, (o, gr)) in outs.iter_mut().zip(g.chunks_exact_mut(v)).enumerate() {
                    let i = i0 + k;
                    let io = RowIo::Fresh(&x[i * v..(i + 1) * v], gr);
                    let (t, sc_i) = (self.targets[i], scale_of(i));
                    *o = row(io, next_of(i), t, self.p, sc_i, sc, &mut pending);
                }
            }
            Dest::Nothing => {
                let x = self.x.expect("logits or in-place rows");
                for (k, o) in outs.iter_mut().enumerate() {
                    let i = i0 + k;
                    let io = RowIo::Separate(&x[i * v..(i + 1) * v], None);
                    let t = self.targets[i];
                    *o = row::<T, F>(io, next_of(i), t, self.p, F::ZERO, sc, &mut pending);
                }
            }
        }
        flush(&mut pending, sc);
    }

    /// [`Self::rows`] compiled for the widest vector unit this CPU has: the row loops
    /// (all `inline(always)`) are inlined into each `target_feature` copy, so they get
    /// AVX-512 or AVX2 code; elsewhere the baseline build is the scalar/SSE fallback.
    /// Rust never contracts a·b+c into an FMA, so every copy computes the same bits.
    fn dispatch<F: Real>(
        &self,
        i0: usize,
        outs: &mut [RowOut],
        data: Dest<'_, T, F>,
        sc: &mut Scratch<F>,
    ) where
        T: Elem<F>,
    {
        #[cfg(target_arch = "x86_64")]
        {
            let level = simd_level();
            if level == 2 {
                // Short f32 rows in registers, the rest with the general row kernel.
                // SAFETY (both): AVX-512 F/BW/VL were detected at run time.
                if let Err(data) = unsafe { self.try_short_rows(i0, outs, data, sc) } {
                    unsafe { self.rows_avx512(i0, outs, data, sc) };
                }
            } else if level == 1 {
                // SAFETY: AVX2 and FMA were detected at run time.
                unsafe { self.rows_avx2(i0, outs, data, sc) };
            } else {
                self.rows(i0, outs, data, sc);
            }
            // The streamed gradient stores are visible before the job ends. Always, not
            // only after the AVX-512 copy: `stream_copy` reads the SIMD level again and a
            // test may change the cap in between.
            store_fence();
        }
        #[cfg(not(target_arch = "x86_64"))]
        self.rows(i0, outs, data, sc)
    }

    /// Rows of f32 logits with V ≤ 256 and no soft-cap, read from a separate buffer, go
    /// to [`short_rows`]; every other job is handed back untouched (`Err(data)`).
    ///
    /// # Safety
    /// The CPU must have AVX-512 F, BW and VL.
    #[cfg(target_arch = "x86_64")]
    unsafe fn try_short_rows<'d, F: Real>(
        &self,
        i0: usize,
        outs: &mut [RowOut],
        data: Dest<'d, T, F>,
        sc: &mut Scratch<F>,
    ) -> Result<(), Dest<'d, T, F>>
    where
        T: Elem<F>,
    {
        use std::any::TypeId;
        let f32_rows =
            TypeId::of::<T>() == TypeId::of::<f32>() && TypeId::of::<F>() == TypeId::of::<f32>();
        let short = (1..=short_rows::MAX_V).contains(&self.p.v) && self.p.softcap.is_none();
        let (Some(x), true) = (self.x, f32_rows && short) else {
            return Err(data);
        };
        // SAFETY: T is f32 (TypeId above): the same type under another name.
        let x: &[f32] = unsafe { std::slice::from_raw_parts(x.as_ptr().cast(), x.len()) };
        // SAFETY: F is f32 (TypeId above).
        let sc = unsafe { &mut *(sc as *mut Scratch<F>).cast::<Scratch<f32>>() };
        let grad: Option<&mut [MaybeUninit<f32>]> = match data {
            Dest::Nothing => None,
            // SAFETY: T is f32; the rows are separate from x (x is given). The view is
            // `MaybeUninit` only for the kernel's signature: it writes initialised values.
            Dest::Rows(g) => Some(as_uninit(unsafe {
                std::slice::from_raw_parts_mut(g.as_mut_ptr().cast::<f32>(), g.len())
            })),
            // SAFETY: F is f32.
            Dest::Fresh(g) => Some(unsafe {
                std::slice::from_raw_parts_mut(g.as_mut_ptr().cast::<MaybeUninit<f32>>(), g.len())
            }),
        };
        let rows = short_rows::Rows {
            x,
            targets: self.targets,
            p: self.p,
            scale: self.scale,
            i0,
        };
        // SAFETY: the caller guarantees AVX-512 F/BW/VL.
        unsafe { short_rows::rows(rows, outs, grad, sc) };
        Ok(())
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
    unsafe fn rows_avx512<F: Real>(
        &self,
        i0: usize,
        outs: &mut [RowOut],
        data: Dest<'_, T, F>,
        sc: &mut Scratch<F>,
    ) where
        T: Elem<F>,
    {
        self.rows(i0, outs, data, sc)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn rows_avx2<F: Real>(
        &self,
        i0: usize,
        outs: &mut [RowOut],
        data: Dest<'_, T, F>,
        sc: &mut Scratch<F>,
    ) where
        T: Elem<F>,
    {
        self.rows(i0, outs, data, sc)
    }
}

/// Jobs run by the short-row kernel since the process started: lets tests see that
/// the registers path really ran (it only does on AVX-512 CPUs).
#[doc(hidden)]
pub fn short_row_jobs() -> u64 {
    #[cfg(target_arch = "x86_64")]
    return short_rows::JOBS.load(std::sync::atomic::Ordering::Relaxed);
    #[cfg(not(target_arch = "x86_64"))]
    0
}

static SIMD_OVERRIDE: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(u8::MAX);

/// Caps the vector level the kernel uses (0 baseline, 1 AVX2, 2 AVX-512), or lifts the
/// cap with `None`: lets tests check that every copy gives the same bits.
pub fn set_simd_cap(level: Option<u8>) {
    SIMD_OVERRIDE.store(
        level.unwrap_or(u8::MAX),
        std::sync::atomic::Ordering::Relaxed,
    );
}

/// 2: AVX-512 (F, BW, VL), 1: AVX2 + FMA, 0: baseline. Detected once, capped by
/// [`set_simd_cap`].
#[cfg(target_arch = "x86_64")]
fn simd_level() -> u8 {
    use std::sync::OnceLock;
    static LEVEL: OnceLock<u8> = OnceLock::new();
    let cap = SIMD_OVERRIDE.load(std::sync::atomic::Ordering::Relaxed);
    cap.min(*LEVEL.get_or_init(|| {
        if std::is_x86_feature_detected!("avx512f")
            && std::is_x86_feature_detected!("avx512bw")
            && std::is_x86_feature_detected!("avx512vl")
        {
            2
        } else if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            1
        } else {
            0
        }
    }))
}
