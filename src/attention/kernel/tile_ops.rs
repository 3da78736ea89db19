//! The arithmetic inside a tile: scalar-looking building blocks that LLVM vectorises
//! once they are inlined into a function compiled for AVX-512 / AVX2+FMA: a
//! register-blocked matrix-multiply micro-kernel, chunked row reductions and a
//! polynomial `exp`.
//!
//! Everything here but the column tail (`micro_tail`) is `#[inline(always)]` on purpose:
//! `crate::cpu::simd::dispatch!` instantiates the whole tile computation (`forward`,
//! `backward`) once per SIMD level, and only inlined code inherits those features.

use std::ops::{Add, Div, Mul, Sub};

/// Lanes per chunk: one zmm register of f32 (two of f64), or two ymm of f32.
pub const L: usize = 16;

/// The float types the fused kernel is instantiated for: f32 (what the model uses)
/// and f64 (what the gradient checks use, through the very same tiling code).
pub trait Elem:
    Copy
    + Send
    + Sync
    + PartialOrd
    + 'static
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
{
    const ZERO: Self;
    const ONE: Self;
    const NEG_INF: Self;
    const INF: Self;
    fn from_f64(x: f64) -> Self;
    fn mul_add(self, a: Self, b: Self) -> Self;
    /// exp(x); exactly 0 for x = -inf.
    fn exp(self) -> Self;
    fn ln(self) -> Self;
}

impl Elem for f32 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    const NEG_INF: Self = f32::NEG_INFINITY;
    const INF: Self = f32::INFINITY;
    #[inline(always)]
    fn from_f64(x: f64) -> Self {
        x as f32
    }
    #[inline(always)]
    fn mul_add(self, a: Self, b: Self) -> Self {
        f32::mul_add(self, a, b)
    }
    #[inline(always)]
    fn exp(self) -> Self {
        exp_f32(self)
    }
    #[inline(always)]
    fn ln(self) -> Self {
        f32::ln(self)
    }
}

impl Elem for f64 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    const NEG_INF: Self = f64::NEG_INFINITY;
    const INF: Self = f64::INFINITY;
    #[inline(always)]
    fn from_f64(x: f64) -> Self {
        x
    }
    #[inline(always)]
    fn mul_add(self, a: Self, b: Self) -> Self {
        f64::mul_add(self, a, b)
    }
    /// libm's exp: the f64 instantiation exists for gradient checks, not for speed.
    #[inline(always)]
    fn exp(self) -> Self {
        f64::exp(self)
    }
    #[inline(always)]
    fn ln(self) -> Self {
        f64::ln(self)
    }
}

use crate::fastmath::exp_f32;

#[inline(always)]
fn max<T: Elem>(a: T, b: T) -> T {
    if a > b {
        a
    } else {
        b
    }
}

/// x[i] <- x[i]·scale, returning the max of the new values (16 lanes, then folded in
/// a fixed order). Scaling before the max keeps the row maximum's exp(x - max) exactly 1,
/// as in the composed reference.
#[inline(always)]
pub fn scale_max<T: Elem>(x: &mut [T], scale: T) -> T {
    let mut acc = [T::NEG_INF; L];
    let mut chunks = x.chunks_exact_mut(L);
    for c in &mut chunks {
        for l in 0..L {
            c[l] = c[l] * scale;
            acc[l] = max(acc[l], c[l]);
        }
    }
    let mut m = T::NEG_INF;
    for v in chunks.into_remainder() {
        *v = *v * scale;
        m = max(m, *v);
    }
    for a in acc {
        m = max(m, a);
    }
    m
}

/// x[i] <- exp(x[i] - shift); returns the sum of the new values (16 partial sums
/// folded in a fixed order, so deterministic).
#[inline(always)]
pub fn exp_shift_sum<T: Elem>(x: &mut [T], shift: T) -> T {
    let mut acc = [T::ZERO; L];
    let mut chunks = x.chunks_exact_mut(L);
    for c in &mut chunks {
        for l in 0..L {
            let e = (c[l] - shift).exp();
            c[l] = e;
            acc[l] = acc[l] + e;
        }
    }
    let mut s = T::ZERO;
    for v in chunks.into_remainder() {
        let e = (*v - shift).exp();
        *v = e;
        s = s + e;
    }
    for a in acc {
        s = s + a;
    }
    s
}

/// x[i] <- exp(x[i]·scale - shift), no sum (backward: shift is the row's log-sum-exp).
/// The product is rounded before the subtraction exactly as in the forward.
#[inline(always)]
pub fn exp_scale_shift<T: Elem>(x: &mut [T], scale: T, shift: T) {
    for v in x.iter_mut() {
        *v = (*v * scale - shift).exp();
    }
}

/// Dot product with one sequential fused multiply-add chain, the same arithmetic as a
/// single entry of [`gemm`]: the backward's δ = rowsum(dO ∘ O) then cancels dP = dO·Vᵀ
/// exactly where it should (a row that sees one key has a zero score gradient).
#[inline(always)]
pub fn dot_seq<T: Elem>(a: &[T], b: &[T]) -> T {
    let mut s = T::ZERO;
    for (&x, &y) in a.iter().zip(b) {
        s = x.mul_add(y, s);
    }
    s
}

/// Dot product in 16 lanes, folded in a fixed order.
#[inline(always)]
pub fn dot<T: Elem>(a: &[T], b: &[T]) -> T {
    let mut acc = [T::ZERO; L];
    let mut ca = a.chunks_exact(L);
    let mut cb = b.chunks_exact(L);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for l in 0..L {
            acc[l] = x[l].mul_add(y[l], acc[l]);
        }
    }
    let mut s = T::ZERO;
    for (&x, &y) in ca.remainder().iter().zip(cb.remainder()) {
        s = x.mul_add(y, s);
    }
    for a in acc {
        s = s + a;
    }
    s
}

/// x[i] *= s
#[inline(always)]
pub fn scale_in_place<T: Elem>(x: &mut [T], s: T) {
    for v in x.iter_mut() {
        *v = *v * s;
    }
}

/// y[i] += a·x[i]
#[inline(always)]
pub fn axpy<T: Elem>(a: T, x: &[T], y: &mut [T]) {
    for (yv, &xv) in y.iter_mut().zip(x) {
        *yv = a.mul_add(xv, *yv);
    }
}

/// A strided matrix operand: element (i, p) lives at `data[i·rs + p·cs]`.
#[derive(Clone, Copy)]
pub struct Strided<'a, T> {
    pub data: &'a [T],
    pub rs: usize,
    pub cs: usize,
}

/// C[m×n] = (accumulate ? C : 0) + A[m×k]·B[k×n], with A strided (so that Aᵀ is free),
/// B row-major with row stride `ldb`, C row-major with row stride `ldc`.
///
/// `n_lim(i0, i1)` may shorten the columns computed for rows i0..i1 (the rest of those
/// rows is left untouched) and `k_range(i0, i1)` the inner range: the causal kernel
/// uses them to skip the masked part of diagonal tiles. Both are rounded by the caller.
///
/// Every row's result depends only on its own inputs and a fixed loop order, so the
/// result is the same whichever thread runs it.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub fn gemm<T: Elem>(
    m: usize,
    n: usize,
    k: usize,
    a: Strided<T>,
    b: &[T],
    ldb: usize,
    c: &mut [T],
    ldc: usize,
    accumulate: bool,
    n_lim: impl Fn(usize, usize) -> usize,
    k_range: impl Fn(usize, usize) -> (usize, usize),
) {
    // Register blocking, rows x 16-lane chunks of C held in registers while p runs.
    // The blocking changes which entries are computed together, not an entry's
    // multiply-add chain, except that a row block's `k_range` may add terms the
    // caller has made exact zeros (masked P or dS), which leave a finite sum unchanged:
    // every level gives the same bits for finite inputs.
    if crate::cpu::simd::level() == crate::cpu::simd::Level::Avx512 {
        // 4 x 4 chunks: 16 of AVX-512's 32 zmm registers, the rest for B's 4 chunks
        // and the broadcasts.
        row_blocks::<T, 4, 4>(m, n, k, a, b, ldb, c, ldc, accumulate, n_lim, k_range);
    } else {
        // 6 x 1 chunk: 12 of AVX2's 16 ymm registers (a chunk is two), 2 for B's chunk
        // and one broadcast. 4 x 4 chunks would need 32 and spill on every p.
        row_blocks::<T, 6, 1>(m, n, k, a, b, ldb, c, ldc, accumulate, n_lim, k_range);
    }
}

/// [`gemm`] in blocks of `MR` rows (then 4, 2, 1 for the rest), `VW` chunks wide.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn row_blocks<T: Elem, const MR: usize, const VW: usize>(
    m: usize,
    n: usize,
    k: usize,
    a: Strided<T>,
    b: &[T],
    ldb: usize,
    c: &mut [T],
    ldc: usize,
    accumulate: bool,
    n_lim: impl Fn(usize, usize) -> usize,
    k_range: impl Fn(usize, usize) -> (usize, usize),
) {
    if m == 0 || n == 0 {
        return;
    }
    // Bounds are checked once here; the micro-kernels below then use raw pointers.
    if k > 0 {
        assert!(
            (m - 1) * a.rs + (k - 1) * a.cs < a.data.len(),
            "gemm: A out of bounds"
        );
        assert!((k - 1) * ldb + n <= b.len(), "gemm: B out of bounds");
    }
    assert!((m - 1) * ldc + n <= c.len(), "gemm: C out of bounds");
    let mut i = 0;
    while i < m {
        let left = m - i;
        let r = if left >= MR {
            MR
        } else if left >= 4 {
            4
        } else if left >= 2 {
            2
        } else {
            1
        };
        let nl = n_lim(i, i + r).min(n);
        let (k0, k1) = k_range(i, i + r);
        let k1 = k1.min(k);
        let k0 = k0.min(k1);
        // SAFETY: the asserts above cover rows i..i+r, columns < n and inner indices < k.
        unsafe {
            match r {
                _ if r == MR => {
                    row_block::<T, MR, VW>(nl, k0, k1, a, b, ldb, c, ldc, i, accumulate)
                }
                4 => row_block::<T, 4, VW>(nl, k0, k1, a, b, ldb, c, ldc, i, accumulate),
                2 => row_block::<T, 2, VW>(nl, k0, k1, a, b, ldb, c, ldc, i, accumulate),
                _ => row_block::<T, 1, VW>(nl, k0, k1, a, b, ldb, c, ldc, i, accumulate),
            }
        }
        i += r;
    }
}

/// Rows i..i+R of C: full `VW`-chunk and 1-chunk column blocks, then the tail.
///
/// # Safety
/// Rows i..i+R, columns < n and inner indices k0..k1 must lie inside `a`, `b` and `c`
/// for the given strides (what `gemm` asserts).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn row_block<T: Elem, const R: usize, const VW: usize>(
    n: usize,
    k0: usize,
    k1: usize,
    a: Strided<T>,
    b: &[T],
    ldb: usize,
    c: &mut [T],
    ldc: usize,
    i: usize,
    accumulate: bool,
) {
    let ap = a.data.as_ptr().add(i * a.rs);
    let cp = c.as_mut_ptr().add(i * ldc);
    let bp = b.as_ptr();
    let mut j = 0;
    while VW > 1 && j + VW * L <= n {
        micro::<T, R, VW>(
            k0,
            k1,
            ap,
            a.rs,
            a.cs,
            bp.add(j),
            ldb,
            cp.add(j),
            ldc,
            accumulate,
        );
        j += VW * L;
    }
    while j + L <= n {
        micro::<T, R, 1>(
            k0,
            k1,
            ap,
            a.rs,
            a.cs,
            bp.add(j),
            ldb,
            cp.add(j),
            ldc,
            accumulate,
        );
        j += L;
    }
    if j < n {
        micro_tail::<T, R>(
            k0,
            k1,
            ap,
            a.rs,
            a.cs,
            bp.add(j),
            ldb,
            cp.add(j),
            ldc,
            accumulate,
            n - j,
        );
    }
}

/// R rows x V·16 columns, accumulated in registers over p in k0..k1.
///
/// # Safety
/// a[r·ars + p·acs], b[p·ldb + j] and c[r·ldc + j] must be valid for r < R,
/// p in k0..k1, j < V·16.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn micro<T: Elem, const R: usize, const V: usize>(
    k0: usize,
    k1: usize,
    a: *const T,
    ars: usize,
    acs: usize,
    b: *const T,
    ldb: usize,
    c: *mut T,
    ldc: usize,
    accumulate: bool,
) {
    let mut acc = [[[T::ZERO; L]; V]; R];
    if accumulate {
        for (r, row) in acc.iter_mut().enumerate() {
            for (v, ch) in row.iter_mut().enumerate() {
                *ch = (c.add(r * ldc + v * L) as *const [T; L]).read_unaligned();
            }
        }
    }
    for p in k0..k1 {
        let brow = b.add(p * ldb);
        let mut bv = [[T::ZERO; L]; V];
        for (v, ch) in bv.iter_mut().enumerate() {
            *ch = (brow.add(v * L) as *const [T; L]).read_unaligned();
        }
        for (r, row) in acc.iter_mut().enumerate() {
            let av = *a.add(r * ars + p * acs);
            for v in 0..V {
                for l in 0..L {
                    row[v][l] = av.mul_add(bv[v][l], row[v][l]);
                }
            }
        }
    }
    for (r, row) in acc.iter().enumerate() {
        for (v, ch) in row.iter().enumerate() {
            (c.add(r * ldc + v * L) as *mut [T; L]).write_unaligned(*ch);
        }
    }
}

/// R rows x w < 16 columns: B is copied into a zero-padded chunk.
///
/// Out of line, unlike the rest of this file: the tail runs only where a width is not a
/// multiple of 16, and inlined into the tile loops its scalar copies cost the hot
/// full-chunk path registers (BENCHMARKS.md, "Measurements behind the code"). It
/// dispatches to its own SIMD copy, so it keeps the level the tile runs at.
///
/// # Safety
/// As [`micro`], for columns j < w.
#[allow(clippy::too_many_arguments)]
#[inline(never)]
unsafe fn micro_tail<T: Elem, const R: usize>(
    k0: usize,
    k1: usize,
    a: *const T,
    ars: usize,
    acs: usize,
    b: *const T,
    ldb: usize,
    c: *mut T,
    ldc: usize,
    accumulate: bool,
    w: usize,
) {
    // The caller's contract (see `# Safety`) is passed on unchanged.
    crate::cpu::simd::dispatch!(micro_tail_body::<T, R>(
        k0, k1, a, ars, acs, b, ldb, c, ldc, accumulate, w
    ))
}

/// The body of [`micro_tail`].
///
/// # Safety
/// As [`micro`], for columns j < w.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn micro_tail_body<T: Elem, const R: usize>(
    k0: usize,
    k1: usize,
    a: *const T,
    ars: usize,
    acs: usize,
    b: *const T,
    ldb: usize,
    c: *mut T,
    ldc: usize,
    accumulate: bool,
    w: usize,
) {
    let mut acc = [[T::ZERO; L]; R];
    if accumulate {
        for (r, row) in acc.iter_mut().enumerate() {
            for (l, x) in row.iter_mut().take(w).enumerate() {
                *x = *c.add(r * ldc + l);
            }
        }
    }
    for p in k0..k1 {
        let mut bv = [T::ZERO; L];
        for (l, x) in bv.iter_mut().take(w).enumerate() {
            *x = *b.add(p * ldb + l);
        }
        for (r, row) in acc.iter_mut().enumerate() {
            let av = *a.add(r * ars + p * acs);
            for l in 0..L {
                row[l] = av.mul_add(bv[l], row[l]);
            }
        }
    }
    for (r, row) in acc.iter().enumerate() {
        for (l, x) in row.iter().take(w).enumerate() {
            *c.add(r * ldc + l) = *x;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gemm_matches_naive_for_odd_shapes() {
        // Rows 13 = 6 + 6 + 1, 10 = 6 + 4, 3 = 2 + 1: every row block of 6 x 1 (the
        // blocking of this CPU's level; `blockings_give_the_same_bits` runs both).
        let shapes = [(1, 1, 1), (5, 17, 3), (9, 70, 13), (4, 64, 64), (7, 33, 0)];
        let more = [(13, 80, 5), (10, 16, 7), (3, 33, 2)];
        for &(m, n, k) in shapes.iter().chain(&more) {
            let a: Vec<f64> = (0..m * k).map(|i| ((i * 7 % 11) as f64) - 5.0).collect();
            let b: Vec<f64> = (0..k * n).map(|i| ((i * 5 % 13) as f64) - 6.0).collect();
            let mut c = vec![1.0f64; m * n];
            // A given transposed (rs = 1, cs = m) to exercise the strided operand.
            let at: Vec<f64> = (0..k * m).map(|i| a[(i % m) * k + i / m]).collect();
            let a_op = Strided {
                data: &at,
                rs: 1,
                cs: m,
            };
            gemm(
                m,
                n,
                k,
                a_op,
                &b,
                n,
                &mut c,
                n,
                true,
                |_, _| usize::MAX,
                |_, _| (0, usize::MAX),
            );
            let mut worst = 0f64;
            for i in 0..m {
                for j in 0..n {
                    let want = 1.0 + (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum::<f64>();
                    worst = worst.max((c[i * n + j] - want).abs());
                }
            }
            println!("gemm {m}x{n}x{k}: max |diff| {worst:e} (integers: exact expected)");
            assert_eq!(worst, 0.0);
        }
    }

    /// Both register blockings (AVX-512's 4 x 4 chunks, AVX2's 6 x 1), called directly
    /// so that a CPU of either kind runs both, give the same bits on every entry a
    /// causal caller reads, with causal `n_lim` / `k_range` (per row block, as in the
    /// tiles) and A zero where a row's mask ends, as the masked P and dS are.
    #[test]
    fn blockings_give_the_same_bits() {
        // (m, n, k, accumulate): rows that leave every leftover block of both, columns
        // that leave a 1-chunk block and a tail.
        for &(m, n, k, acc) in &[
            (64, 64, 64, true),
            (13, 83, 29, false),
            (7, 40, 9, true),
            (1, 5, 3, false),
        ] {
            let mut seed = (m * 131 + n * 17 + k) as u64;
            let mut rnd = move || {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((seed >> 40) as f32 / (1u64 << 24) as f32) - 0.5
            };
            // Row r sees inner indices p <= r (and columns j <= r + 3): A is zero beyond.
            let vis_k = |r: usize| (r + 1).min(k);
            let vis_n = |r: usize| (r + 4).min(n);
            let a: Vec<f32> = (0..m * k)
                .map(|i| {
                    if i % k.max(1) < vis_k(i / k.max(1)) {
                        rnd()
                    } else {
                        0.0
                    }
                })
                .collect();
            let b: Vec<f32> = (0..k * n).map(|_| rnd()).collect();
            let c0: Vec<f32> = (0..m * n).map(|_| rnd()).collect();
            let a_op = Strided {
                data: &a,
                rs: k,
                cs: 1,
            };
            let n_lim = |_i0: usize, i1: usize| (vis_n(i1 - 1).div_ceil(L) * L).min(n);
            let k_range = |_i0: usize, i1: usize| (0, vis_k(i1 - 1));
            let (mut c44, mut c61) = (c0.clone(), c0.clone());
            row_blocks::<f32, 4, 4>(m, n, k, a_op, &b, n, &mut c44, n, acc, n_lim, k_range);
            row_blocks::<f32, 6, 1>(m, n, k, a_op, &b, n, &mut c61, n, acc, n_lim, k_range);
            for r in 0..m {
                for j in 0..vis_n(r) {
                    let (x, y) = (c44[r * n + j], c61[r * n + j]);
                    assert_eq!(
                        x.to_bits(),
                        y.to_bits(),
                        "{m}x{n}x{k} ({r}, {j}): {x} vs {y}"
                    );
                    // And right, not merely equal: against the f64 sum, within f32
                    // rounding of its terms.
                    let terms = (0..k).map(|p| a[r * k + p] as f64 * b[p * n + j] as f64);
                    let start = if acc { c0[r * n + j] as f64 } else { 0.0 };
                    let want = start + terms.clone().sum::<f64>();
                    let bound = 1e-6 * (start.abs() + terms.map(f64::abs).sum::<f64>() + 1.0);
                    assert!(
                        (x as f64 - want).abs() <= bound,
                        "({r}, {j}): {x} vs {want}"
                    );
                }
            }
            println!("{m}x{n}x{k} accumulate={acc}: 4 x 4 and 6 x 1 bitwise equal");
        }
    }
}
