//! The matrix product of `--dtype bf16` training: dst [m, n] = (dst if `acc`, else
//! 0) plus A [m, k] · B [k, n], with A and B each f32 in memory, rounded to bf16
//! (nearest even) as they are packed, or bf16 already (`Factor`: an activation stored
//! for the products it feeds), and every product summed in f32. This is what PyTorch's
//! CPU autocast does to a linear layer, minus the bf16 output: dst stays f32.
//!
//! Why our own: the gemm crate has no bf16 kernel, and AVX512-BF16's `vdpbf16ps`
//! does 32 multiply-adds a 512-bit instruction where an f32 FMA does 16.
//!
//! Layout, BLIS-style. Both operands are packed once a call, in k-pairs, because
//! `vdpbf16ps` adds the products of two adjacent bf16 pairs into one f32 lane:
//!
//! ```text
//! A packed: strips of MR rows;    strip s, pair p, row i  -> u32 (a[i, 2p], a[i, 2p+1])
//! B packed: strips of NR columns; strip s, pair p, col j  -> u32 (b[2p, j], b[2p+1, j])
//! ```
//!
//! (low half the even k, zeros past the edges). A micro-tile [MR, NR] then is, per
//! pair, two 16-lane loads of B, MR broadcasts of A and 2·MR `vdpbf16ps` into 24
//! accumulators. Tasks are [MC, NC] blocks of dst; each walks k in KC passes, so every
//! dst entry sums its k in the same order whatever the thread count (same bits).
//!
//! CPUs without AVX512-BF16 (and runs capped below AVX-512) take a portable packer
//! and micro-kernel with the same rounding of the inputs and the order of sums Intel
//! documents for `vdpbf16ps` (the odd k's product added first, each add rounded once).
//! They agree bit for bit where tested (tests/gemm_bf16.rs, on the AVX512-BF16 host
//! the tests run on). Subnormal inputs become zeros in both (the packers flush them, as
//! the instructions do); subnormal sums, which `vdpbf16ps` flushes, can differ.

use crate::cpu::{assume_init, bf16_bits_rne_ftz, bf16_to_f32, simd, uninit_vec};
use half::bf16;
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// Rows of a micro-tile.
const MR: usize = 12;
/// Columns of a micro-tile: two vectors of 16 f32 lanes.
const NR: usize = 32;
/// k-pairs of one pass: a B strip (KC_PAIRS · NR · 4 bytes = 16 KiB) stays in L1
/// while the task's A strips stream past it.
const KC_PAIRS: usize = 128;
/// Rows and columns of a task: multiples of MR and NR.
const MC: usize = 8 * MR;
const NC: usize = 8 * NR;

/// Whether this process runs the AVX512-BF16 micro-kernel (the CPU has it and the
/// SIMD level is not capped below AVX-512); otherwise the portable one.
pub fn native() -> bool {
    simd::has_avx512bf16()
}

/// f32 -> the bf16 bits a factor is rounded to: nearest even, subnormals to a zero of
/// their sign (as `vcvtne2ps2bf16` does, so both kernels pack the same bits); NaN
/// stays NaN (quiet).
#[inline(always)]
pub fn to_bf16(x: f32) -> u16 {
    bf16_bits_rne_ftz(x)
}

/// bf16 bits -> f32 (exact).
#[inline(always)]
pub fn from_bf16(h: u16) -> f32 {
    bf16_to_f32(h)
}

/// A factor's values in memory: f32, rounded by [`to_bf16`] as they are packed, or bf16
/// already rounded so (an activation the step stores only for its products: the same
/// bits the product would give it, in half the bytes).
pub trait Factor: Copy + Send + Sync + 'static {
    /// The bf16 bits the product multiplies.
    fn bits(self) -> u16;

    /// 16 values of each of two rows, masked to `m` (a `None` row reads as zeros), as
    /// bf16: `lo`'s in lanes 0..16, `hi`'s in 16..32.
    ///
    /// # Safety
    /// The CPU has AVX-512 F, BW and BF16; the masked lanes of each row are readable.
    #[cfg(target_arch = "x86_64")]
    unsafe fn two_rows(
        lo: Option<*const Self>,
        hi: Option<*const Self>,
        m: u16,
    ) -> std::arch::x86_64::__m512i;

    /// The first `len` (at most 32) of 32 consecutive values as bf16, zeros after.
    ///
    /// # Safety
    /// As [`Factor::two_rows`]; `len` values from `p` are readable.
    #[cfg(target_arch = "x86_64")]
    unsafe fn run32(p: *const Self, len: usize) -> std::arch::x86_64::__m512i;
}

impl Factor for f32 {
    #[inline(always)]
    fn bits(self) -> u16 {
        to_bf16(self)
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn two_rows(
        lo: Option<*const f32>,
        hi: Option<*const f32>,
        m: u16,
    ) -> std::arch::x86_64::__m512i {
        use std::arch::x86_64::*;
        // SAFETY: the caller's contract.
        let row = |p: Option<*const f32>| unsafe {
            p.map_or(_mm512_setzero_ps(), |p| _mm512_maskz_loadu_ps(m, p))
        };
        // SAFETY: the caller's CPU has AVX512-BF16.
        let bh = unsafe { _mm512_cvtne2ps_pbh(row(hi), row(lo)) };
        // SAFETY: a bit cast of 512 bits.
        unsafe { std::mem::transmute::<__m512bh, __m512i>(bh) }
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn run32(p: *const f32, len: usize) -> std::arch::x86_64::__m512i {
        use std::arch::x86_64::*;
        // SAFETY: the caller's contract; masked lanes are not read.
        unsafe {
            let a = _mm512_maskz_loadu_ps(lanes(len), p);
            let b = _mm512_maskz_loadu_ps(lanes(len.saturating_sub(16)), p.wrapping_add(16));
            std::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(b, a))
        }
    }
}

impl Factor for bf16 {
    /// The bits, a subnormal as a zero of its sign (as `vdpbf16ps` reads it, so that
    /// the portable kernel multiplies what the native one does; the step never stores
    /// one: [`to_bf16`] flushes them).
    #[inline(always)]
    fn bits(self) -> u16 {
        let h = self.to_bits();
        if h & 0x7F80 == 0 {
            h & 0x8000
        } else {
            h
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn two_rows(
        lo: Option<*const bf16>,
        hi: Option<*const bf16>,
        m: u16,
    ) -> std::arch::x86_64::__m512i {
        use std::arch::x86_64::*;
        // SAFETY: the caller's contract. `hi`'s 16 values load into lanes 16..32 from
        // 16 before it; the lanes below are masked off and not read.
        unsafe {
            let lo = lo.map_or(_mm512_setzero_si512(), |p| {
                _mm512_maskz_loadu_epi16(m as u32, p as *const i16)
            });
            let hi = hi.map_or(_mm512_setzero_si512(), |p| {
                _mm512_maskz_loadu_epi16((m as u32) << 16, p.wrapping_sub(16) as *const i16)
            });
            _mm512_or_si512(lo, hi)
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn run32(p: *const bf16, len: usize) -> std::arch::x86_64::__m512i {
        use std::arch::x86_64::*;
        let m = if len >= 32 {
            u32::MAX
        } else {
            (1u32 << len) - 1
        };
        // SAFETY: the caller's contract; masked lanes are not read.
        unsafe { _mm512_maskz_loadu_epi16(m, p as *const i16) }
    }
}

/// An operand: (data, row stride, column stride).
pub type Operand<'a, E = f32> = (&'a [E], usize, usize);

/// Packs `len` columns (or rows) of an operand into `width`-wide strips of k-pairs:
/// `out[s][p][j] = (x(s·width + j, 2p), x(s·width + j, 2p + 1))` where
/// `x(j, kk) = data[j·js + kk·ks]`, zero past `len` and `k`.
/// `native`: with the AVX512-BF16 packers where the layout has one.
fn pack<E: Factor>(
    (data, js, ks): (&[E], usize, usize),
    len: usize,
    k: usize,
    width: usize,
    (par, native): (bool, bool),
) -> Vec<u32> {
    let pairs = k.div_ceil(2);
    let strips = len.div_ceil(width);
    let mut out = uninit_vec::<u32>(strips * pairs * width);
    // A task packs a group of strips (~128 columns), so that the contiguous-columns
    // path reads whole cache lines of each row once, not a strip's 12 values a visit.
    let group = (128 / width).max(1);
    let pack_group = |(g, chunk): (usize, &mut [MaybeUninit<u32>])| {
        let j0 = g * group * width;
        #[cfg(target_arch = "x86_64")]
        if native && js == 1 {
            // SAFETY: `native` only when the CPU has AVX512-BF16 (and AVX-512 F, BW).
            unsafe { pack_group_columns_contiguous((data, ks), j0, len - j0, k, width, chunk) };
            return;
        }
        for (i, strip) in chunk.chunks_mut(pairs * width).enumerate() {
            let src = Strip {
                data,
                js,
                ks,
                j0: j0 + i * width,
                cols: width.min(len - j0 - i * width),
                k,
            };
            #[cfg(target_arch = "x86_64")]
            if native && ks == 1 {
                // SAFETY: as above.
                unsafe { pack_strip_k_contiguous(src, strip) };
                continue;
            }
            pack_strip_portable(src, strip);
        }
    };
    if par {
        out.par_chunks_mut(group * pairs * width)
            .enumerate()
            .for_each(pack_group);
    } else {
        out.chunks_mut(group * pairs * width)
            .enumerate()
            .for_each(pack_group);
    }
    // SAFETY: every packer writes all pairs · width entries of each strip it is given.
    unsafe { assume_init(out) }
}

/// One strip's source: `cols` columns from `j0`, `k` deep; x(j, kk) = data[j·js + kk·ks].
#[derive(Clone, Copy)]
struct Strip<'a, E> {
    data: &'a [E],
    js: usize,
    ks: usize,
    j0: usize,
    cols: usize,
    k: usize,
}

impl<E: Factor> Strip<'_, E> {
    fn at(&self, j: usize, kk: usize) -> u16 {
        self.data[(self.j0 + j) * self.js + kk * self.ks].bits()
    }
}

/// Writes every entry of `out` (pairs x width): the pairs of the strip, zeros past it.
fn pack_strip_portable<E: Factor>(x: Strip<E>, out: &mut [MaybeUninit<u32>]) {
    let width = out.len() / x.k.div_ceil(2);
    for (p, row) in out.chunks_exact_mut(width).enumerate() {
        for (j, o) in row.iter_mut().enumerate() {
            let v = if j < x.cols {
                let lo = x.at(j, 2 * p) as u32;
                let hi = if 2 * p + 1 < x.k {
                    x.at(j, 2 * p + 1) as u32
                } else {
                    0
                };
                lo | hi << 16
            } else {
                0
            };
            o.write(v);
        }
    }
}

/// The lanes below `n` (at most 16).
#[cfg(target_arch = "x86_64")]
fn lanes(n: usize) -> u16 {
    ((1u32 << n.min(16)) - 1) as u16
}

/// [`pack_strip_portable`] for a group of strips whose columns are contiguous (x(j, kk)
/// = data[j + kk·ks], from column `j0`, `cols` of them in all): row pair by row pair,
/// 16 columns of each row as bf16 ([`Factor::two_rows`]), interleaved.
///
/// # Safety
/// The CPU has AVX-512 F, BW and BF16.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn pack_group_columns_contiguous<E: Factor>(
    (data, ks): (&[E], usize),
    j0: usize,
    cols: usize,
    k: usize,
    width: usize,
    out: &mut [MaybeUninit<u32>],
) {
    use std::arch::x86_64::*;
    let pairs = k.div_ceil(2);
    let strips = out.len() / (pairs * width);
    // Lane j of the result: bf16 2j from row 2p, 2j + 1 from row 2p + 1.
    let idx: [i16; 32] = std::array::from_fn(|i| (i / 2 + 16 * (i % 2)) as i16);
    // SAFETY: 32 i16 are one 512-bit vector.
    let idx = unsafe { _mm512_loadu_si512(idx.as_ptr() as *const _) };
    let o = out.as_mut_ptr() as *mut u32;
    for p in 0..pairs {
        for s in 0..strips {
            for j in (0..width).step_by(16) {
                let c = s * width + j; // column within the group
                let m = lanes(cols.saturating_sub(c));
                let row = |kk: usize| {
                    (kk < k && m != 0).then(|| {
                        let at = j0 + c + kk * ks;
                        debug_assert!(at + m.count_ones() as usize <= data.len());
                        data.as_ptr().wrapping_add(at)
                    })
                };
                // SAFETY: the masked lanes are columns of rows 2p and 2p + 1, in data.
                let bh = unsafe { E::two_rows(row(2 * p), row(2 * p + 1), m) };
                let v = _mm512_permutexvar_epi16(idx, bh);
                let at = (s * pairs + p) * width + j;
                // SAFETY: lanes j.. of pair p's row of strip s, inside out.
                unsafe { _mm512_mask_storeu_epi32(o.add(at) as *mut _, lanes(width - j), v) };
            }
        }
    }
}

/// [`pack_strip_portable`] for a strip whose columns each hold their k contiguously
/// (`ks` = 1): 16 columns x 16 pairs at a time, 32 values of a column as bf16
/// ([`Factor::run32`]: its 16 pairs), then a 16 x 16 transpose so that each pair's
/// columns are stored together.
///
/// # Safety
/// The CPU has AVX-512 F, BW and BF16; `x.ks` = 1.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn pack_strip_k_contiguous<E: Factor>(x: Strip<E>, out: &mut [MaybeUninit<u32>]) {
    use std::arch::x86_64::*;
    debug_assert_eq!(x.ks, 1);
    let pairs = x.k.div_ceil(2);
    let width = out.len() / pairs;
    let o = out.as_mut_ptr() as *mut u32;
    for jb in (0..width).step_by(16) {
        for p in (0..pairs).step_by(16) {
            let left = (x.k - 2 * p).min(32);
            let mut r = [_mm512_setzero_si512(); 16];
            for (q, r) in r.iter_mut().enumerate() {
                let j = jb + q;
                if j < x.cols {
                    // SAFETY: the column's k values from 2p on, `left` of them, are in data.
                    *r = unsafe { E::run32(x.data.as_ptr().add((x.j0 + j) * x.js + 2 * p), left) };
                }
            }
            let t = transpose16(r);
            let store = lanes(width - jb);
            for (q, v) in t.iter().enumerate().take(pairs - p) {
                // SAFETY: pair p + q < pairs; lanes jb.. of its row of width entries.
                unsafe {
                    _mm512_mask_storeu_epi32(o.add((p + q) * width + jb) as *mut _, store, *v)
                };
            }
        }
    }
}

/// Transposes 16 x 16 u32: lane j of result i is lane i of input j.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn transpose16(r: [std::arch::x86_64::__m512i; 16]) -> [std::arch::x86_64::__m512i; 16] {
    use std::arch::x86_64::*;
    // Pairs of rows interleaved by 32 bits, then by 64, then 128-bit lanes twice.
    let mut t = [_mm512_setzero_si512(); 16];
    for i in 0..8 {
        t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
    }
    let mut u = [_mm512_setzero_si512(); 16];
    for i in 0..4 {
        let (a, b, c, d) = (t[4 * i], t[4 * i + 1], t[4 * i + 2], t[4 * i + 3]);
        u[4 * i] = _mm512_unpacklo_epi64(a, c);
        u[4 * i + 1] = _mm512_unpackhi_epi64(a, c);
        u[4 * i + 2] = _mm512_unpacklo_epi64(b, d);
        u[4 * i + 3] = _mm512_unpackhi_epi64(b, d);
    }
    // Now u[4i + m] holds, in each 128-bit lane L, elements (row 4i..4i+4, column 4L + m).
    let mut v = [_mm512_setzero_si512(); 16];
    for i in 0..2 {
        for m in 0..4 {
            let (a, b) = (u[8 * i + m], u[8 * i + 4 + m]);
            v[8 * i + m] = _mm512_shuffle_i32x4::<0x88>(a, b);
            v[8 * i + 4 + m] = _mm512_shuffle_i32x4::<0xdd>(a, b);
        }
    }
    // v[8i + m] holds rows 8i..8i+8 of columns m and m + 8; one more 128-bit shuffle
    // puts rows 0..16 of each column together.
    let mut w = [_mm512_setzero_si512(); 16];
    for m in 0..8 {
        let (a, b) = (v[m], v[8 + m]);
        w[m] = _mm512_shuffle_i32x4::<0x88>(a, b);
        w[8 + m] = _mm512_shuffle_i32x4::<0xdd>(a, b);
    }
    w
}

/// What every matrix product (this one and `model::native`'s f32 one) checks before
/// any work: dst holds m rows of n at row stride `dst_rs`, and A [m, k] and B [k, n]
/// hold their last entries (panics naming `name` otherwise: a caller's bug, never
/// user input). Returns false when nothing is left to compute: m, n or k is 0 (with
/// k = 0 a fresh dst is then all zeros, an accumulated one unchanged).
pub(crate) fn checked_product<A, B>(
    name: &str,
    (m, n, k): (usize, usize, usize),
    (dst, dst_rs): (&mut [MaybeUninit<f32>], usize),
    acc: bool,
    (a, a_rs, a_cs): Operand<A>,
    (b, b_rs, b_cs): Operand<B>,
) -> bool {
    if m == 0 || n == 0 {
        return false;
    }
    assert!(
        dst_rs >= n && dst.len() >= (m - 1) * dst_rs + n,
        "{name}: destination too small"
    );
    if k == 0 {
        if !acc {
            for row in dst.chunks_mut(dst_rs).take(m) {
                row[..n].fill(MaybeUninit::new(0.0));
            }
        }
        return false;
    }
    let last = |rs: usize, cs: usize, r: usize, c: usize| (r - 1) * rs + (c - 1) * cs;
    assert!(a.len() > last(a_rs, a_cs, m, k), "{name}: lhs too small");
    assert!(b.len() > last(b_rs, b_cs, k, n), "{name}: rhs too small");
    true
}

/// A pointer to dst that tasks writing disjoint blocks share.
#[derive(Clone, Copy)]
struct DstPtr(*mut f32);
// SAFETY: every task writes only its own [MC, NC] block of dst (see `gemm`).
unsafe impl Send for DstPtr {}
unsafe impl Sync for DstPtr {}

impl DstPtr {
    /// # Safety
    /// `offset` is inside dst.
    unsafe fn at(self, offset: usize) -> *mut f32 {
        // SAFETY: the caller keeps offset inside dst.
        unsafe { self.0.add(offset) }
    }
}

/// dst [m, n] (row stride `dst_rs`) = (dst if `acc`, else 0) + A · B in bf16 products
/// with f32 sums: on the rayon pool when `threads` > 1, else on the calling thread. With `acc` false every entry of dst
/// is written and none is read.
pub fn gemm<A: Factor, B: Factor>(
    threads: usize,
    (m, n, k): (usize, usize, usize),
    (dst, dst_rs): (&mut [MaybeUninit<f32>], usize),
    acc: bool,
    (a, a_rs, a_cs): Operand<A>,
    (b, b_rs, b_cs): Operand<B>,
) {
    if !checked_product(
        "gemm_bf16",
        (m, n, k),
        (dst, dst_rs),
        acc,
        (a, a_rs, a_cs),
        (b, b_rs, b_cs),
    ) {
        return;
    }
    let (par, native) = (threads > 1, native());
    // A's rows are its strips' "columns" (stride a_rs), k along a_cs; B's columns
    // along b_cs, k along b_rs.
    let ap = pack((a, a_rs, a_cs), m, k, MR, (par, native));
    let bp = pack((b, b_cs, b_rs), n, k, NR, (par, native));
    let pairs = k.div_ceil(2);
    let (mt, nt) = (m.div_ceil(MC), n.div_ceil(NC));
    let ptr = DstPtr(dst.as_mut_ptr() as *mut f32);
    let task = |task: usize| {
        let (ib, jb) = (task / nt, task % nt);
        let (i0, j0) = (ib * MC, jb * NC);
        let (i1, j1) = ((i0 + MC).min(m), (j0 + NC).min(n));
        for p0 in (0..pairs).step_by(KC_PAIRS) {
            let kp = KC_PAIRS.min(pairs - p0);
            let first = p0 == 0 && !acc;
            for j in (j0..j1).step_by(NR) {
                let bs = &bp[(j / NR) * pairs * NR + p0 * NR..][..kp * NR];
                for i in (i0..i1).step_by(MR) {
                    let as_ = &ap[(i / MR) * pairs * MR + p0 * MR..][..kp * MR];
                    let (rows, cols) = (MR.min(m - i), NR.min(n - j));
                    let tile = Tile {
                        // SAFETY: (i, j) is inside dst; the tile's rows and cols
                        // stay inside it, and inside this task's block.
                        c: unsafe { ptr.at(i * dst_rs + j) },
                        rs: dst_rs,
                        rows,
                        cols,
                        first,
                    };
                    // SAFETY: `native` only when the CPU has AVX512-BF16; the
                    // strips hold kp pairs of MR (NR) values.
                    unsafe {
                        if native {
                            #[cfg(target_arch = "x86_64")]
                            micro_avx512bf16(as_, bs, kp, tile);
                        } else {
                            micro_portable(as_, bs, kp, tile);
                        }
                    }
                }
            }
        }
    };
    if par {
        (0..mt * nt).into_par_iter().for_each(task);
    } else {
        (0..mt * nt).for_each(task);
    }
}

/// Where a micro-tile's sums go: `rows` x `cols` entries from `c`, row stride `rs`;
/// stored when `first`, added to dst otherwise.
#[derive(Clone, Copy)]
struct Tile {
    c: *mut f32,
    rs: usize,
    rows: usize,
    cols: usize,
    first: bool,
}

/// The portable micro-kernel: per pair, the odd k's product then the even k's, as
/// `vdpbf16ps` adds them (bf16 products are exact in f32, so each add rounds once).
///
/// # Safety
/// `a` holds kp·MR and `b` kp·NR values; the tile lies inside dst.
unsafe fn micro_portable(a: &[u32], b: &[u32], kp: usize, t: Tile) {
    let mut acc = [[0f32; NR]; MR];
    for p in 0..kp {
        let (ar, br) = (&a[p * MR..(p + 1) * MR], &b[p * NR..(p + 1) * NR]);
        for (row, &ap) in acc.iter_mut().zip(ar) {
            let (alo, ahi) = (from_bf16(ap as u16), from_bf16((ap >> 16) as u16));
            for (s, &bp) in row.iter_mut().zip(br) {
                let (blo, bhi) = (from_bf16(bp as u16), from_bf16((bp >> 16) as u16));
                *s += ahi * bhi;
                *s += alo * blo;
            }
        }
    }
    for (i, row) in acc.iter().enumerate().take(t.rows) {
        for (j, &s) in row.iter().enumerate().take(t.cols) {
            // SAFETY: row i < t.rows and column j < t.cols of the tile, inside dst; on
            // the first pass the entry is written, not read (it may be uninitialised).
            unsafe {
                let o = t.c.add(i * t.rs + j);
                o.write(if t.first { s } else { o.read() + s });
            }
        }
    }
}

/// The AVX512-BF16 micro-kernel: 2·MR accumulators of 16 lanes.
///
/// # Safety
/// The CPU has AVX512-F and AVX512-BF16; as [`micro_portable`] otherwise.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn micro_avx512bf16(a: &[u32], b: &[u32], kp: usize, t: Tile) {
    use std::arch::x86_64::*;
    debug_assert!(a.len() >= kp * MR && b.len() >= kp * NR);
    let mut acc = [_mm512_setzero_ps(); 2 * MR];
    let (mut ap, mut bp) = (a.as_ptr(), b.as_ptr());
    for _ in 0..kp {
        // SAFETY: pair p's NR values of B and MR values of A are in bounds.
        let (b0, b1) = unsafe {
            (
                std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(bp as *const _)),
                std::mem::transmute::<__m512i, __m512bh>(
                    _mm512_loadu_si512(bp.add(16) as *const _),
                ),
            )
        };
        for i in 0..MR {
            // SAFETY: as above.
            let x = unsafe { _mm512_set1_epi32(*ap.add(i) as i32) };
            let x = std::mem::transmute::<__m512i, __m512bh>(x);
            acc[2 * i] = _mm512_dpbf16_ps(acc[2 * i], x, b0);
            acc[2 * i + 1] = _mm512_dpbf16_ps(acc[2 * i + 1], x, b1);
        }
        // SAFETY: one past the last pair at most.
        unsafe {
            ap = ap.add(MR);
            bp = bp.add(NR);
        }
    }
    let lo = t.cols.min(16);
    let hi = t.cols.saturating_sub(16);
    let (m0, m1): (__mmask16, __mmask16) = (
        ((1u32 << lo) - 1) as __mmask16,
        ((1u32 << hi) - 1) as __mmask16,
    );
    for i in 0..t.rows {
        // SAFETY: masked to the tile's columns, rows below t.rows.
        unsafe {
            let c = t.c.add(i * t.rs);
            let (mut s0, mut s1) = (acc[2 * i], acc[2 * i + 1]);
            if !t.first {
                s0 = _mm512_add_ps(s0, _mm512_maskz_loadu_ps(m0, c));
                s1 = _mm512_add_ps(s1, _mm512_maskz_loadu_ps(m1, c.wrapping_add(16)));
            }
            _mm512_mask_storeu_ps(c, m0, s0);
            _mm512_mask_storeu_ps(c.wrapping_add(16), m1, s1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A bf16 factor packs to the words its f32 values pack to, zero padding included,
    /// in every packer (the AVX512-BF16 ones where the CPU has them, and the portable
    /// one): over odd k and partial strips, with a stride wider than the operand whose
    /// gaps hold NaN, so that a packer reading past its columns or its k shows.
    #[test]
    fn bf16_factors_pack_to_the_words_of_their_f32_values() {
        let natives: &[bool] = if native() { &[false, true] } else { &[false] };
        for &(len, k) in &[(1, 1), (13, 5), (33, 37), (140, 64), (29, 300)] {
            for width in [MR, NR] {
                // Columns contiguous (js = 1, ks = len + 3) and k contiguous
                // (js = k + 3, ks = 1).
                for (js, ks) in [(1, len + 3), (k + 3, 1)] {
                    let size = (len - 1) * js + (k - 1) * ks + 1;
                    let mut x = vec![f32::NAN; size + 7];
                    for j in 0..len {
                        for kk in 0..k {
                            let v = ((j * 31 + kk * 17) % 97) as f32 / 13.0 - 3.3;
                            x[j * js + kk * ks] = v * if kk % 11 == 0 { 1e-40 } else { 1.0 };
                        }
                    }
                    let h: Vec<bf16> = x.iter().map(|&v| bf16::from_bits(to_bf16(v))).collect();
                    for &nat in natives {
                        for par in [false, true] {
                            let opts = (par, nat);
                            let from_f32 = pack((&x[..size], js, ks), len, k, width, opts);
                            let from_bf16 = pack((&h[..size], js, ks), len, k, width, opts);
                            assert_eq!(
                                from_f32, from_bf16,
                                "len {len} k {k} width {width} js {js} ks {ks} native {nat}"
                            );
                            if nat {
                                let portable =
                                    pack((&x[..size], js, ks), len, k, width, (par, false));
                                assert_eq!(
                                    from_f32, portable,
                                    "len {len} k {k} native vs portable"
                                );
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn rounding_is_nearest_even() {
        assert_eq!(to_bf16(1.0), 0x3f80);
        // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties go to the even (1.0).
        assert_eq!(to_bf16(1.0 + 1.0 / 256.0), 0x3f80);
        // 1 + 3·2^-8 is halfway between 1 + 2^-7 and 1 + 2^-6: to the even (1 + 2^-6).
        assert_eq!(to_bf16(1.0 + 3.0 / 256.0), 0x3f82);
        assert_eq!(from_bf16(to_bf16(-2.5)), -2.5);
        assert!(from_bf16(to_bf16(f32::NAN)).is_nan());
        assert_eq!(from_bf16(to_bf16(f32::INFINITY)), f32::INFINITY);
        assert_eq!(from_bf16(to_bf16(f32::MAX)), f32::INFINITY);
        for x in [0.1f32, -3.7, 1e-30, 6.5e4] {
            assert_eq!(to_bf16(x), half::bf16::from_f32(x).to_bits(), "{x}");
        }
    }
}
