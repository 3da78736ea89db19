//! Fused attention on CPU in the FlashAttention-2 manner.
//!
//! Forward: for each (batch·head, query tile of `block_q` rows), walk the key tiles of
//! `block_k` columns that the tile can see, S = Q·Kᵀ in a tile buffer, online softmax in
//! the input precision (f32 for the model), O += P·V. Only O [B, H, Tq, D] and the
//! per-row log-sum-exp [B, H, Tq] survive; nothing grows with T².
//!
//! Backward recomputes P = exp(S·scale - lse) tile by tile:
//!   dV_j += P_ijᵀ·dO_i,  dP_ij = dO_i·V_jᵀ,  dS_ij = P_ij ∘ (dP_ij - δ_i)·scale,
//!   dK_j += dS_ijᵀ·Q_i,  dQ_i += dS_ij·K_j,   with δ_i = rowsum(dO_i ∘ O_i).
//! Determinism without atomics: every output row is written by exactly one task and
//! accumulated in a fixed order (dK_j, dV_j over i ascending, dQ_i over j ascending).
//! When B·H alone keeps the threads busy, one task per (b, h) does all of it in one
//! sweep; otherwise (small B·H) a key-tile pass produces dK, dV and a query-tile pass
//! produces dQ, recomputing S and dP once more. Both schedules perform the same
//! floating-point operations in the same order, so the result does not depend on the
//! thread count either.
//!
//! Masking: query row r (0-based within Tq) sits at absolute position r + Tk - Tq and
//! sees keys c <= r + Tk - Tq when causal (Tq = Tk for self-attention; Tq < Tk for the
//! KV cache). Key tiles entirely above a query tile are skipped, and in diagonal tiles
//! only the 16-column chunks that some row of a 4-row block can see are computed.

use super::simd::{self, Elem, Strided, L};
use crate::kernels::storage_slice;
use candle_core::{bail, CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use std::sync::{Arc, Mutex};

/// How [`attention`] runs.
#[derive(Debug, Clone, Copy)]
pub struct FusedOptions {
    /// Causal mask (query i sees keys <= i + Tk - Tq). `false` is full attention, kept
    /// for benchmarks (the causal/non-causal speed ratio) and completeness.
    pub causal: bool,
    /// Query rows per tile.
    pub block_q: usize,
    /// Key columns per tile.
    pub block_k: usize,
}

impl Default for FusedOptions {
    /// 64x64 tiles: with D = 64 the Q, K, V and S tiles are 16 KiB each, and the S tile
    /// plus one operand fit in the 32 KiB L1 while the rest stays in L2.
    fn default() -> Self {
        Self {
            causal: true,
            block_q: 64,
            block_k: 64,
        }
    }
}

/// Fused attention of q [B, H, Tq, D] against k, v [B, H, Tk, D] -> [B, H, Tq, D],
/// scaled by 1/sqrt(D), Tq <= Tk when causal. Differentiable in q, k and v (explicit
/// backward). Any layout is accepted (non-contiguous inputs are copied). f32 and f64,
/// CPU only.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, opts: FusedOptions) -> Result<Tensor> {
    let (b, h, tq, d) = q.dims4()?;
    let (bk, hk, tk, dk) = k.dims4()?;
    if (bk, hk, dk) != (b, h, d) || v.dims4()? != (b, h, tk, d) {
        bail!(
            "fused attention: shapes q {:?} k {:?} v {:?} do not match",
            q.shape(),
            k.shape(),
            v.shape()
        );
    }
    if opts.causal && tq > tk {
        bail!("fused attention: causal needs Tq <= Tk, got Tq = {tq}, Tk = {tk}");
    }
    if opts.block_q == 0 || opts.block_k == 0 {
        bail!("fused attention: zero block size");
    }
    let q = q.contiguous()?;
    let k = k.contiguous()?;
    let v = v.contiguous()?;
    let track = q.track_op() || k.track_op() || v.track_op();
    let op = FusedAttention {
        opts,
        save_lse: track,
        lse: Mutex::new(None),
    };
    if track {
        q.apply_op3_arc(&k, &v, Arc::new(Box::new(op)))
    } else {
        q.apply_op3_no_bwd(&k, &v, &op)
    }
}

/// Shapes and constants shared by every tile task.
#[derive(Clone, Copy)]
struct Dims<T> {
    bh: usize,
    tq: usize,
    tk: usize,
    d: usize,
    causal: bool,
    bq: usize,
    bk: usize,
    scale: T,
}

impl<T: Elem> Dims<T> {
    fn n_qtiles(&self) -> usize {
        self.tq.div_ceil(self.bq)
    }
    fn n_ktiles(&self) -> usize {
        self.tk.div_ceil(self.bk)
    }
    /// Number of keys visible to query row r (absolute index within Tq).
    #[inline(always)]
    fn visible(&self, r: usize) -> usize {
        if self.causal {
            (r + self.tk - self.tq + 1).min(self.tk)
        } else {
            self.tk
        }
    }
    /// Rows [r0, r0 + len) of the query tile i.
    fn qtile(&self, i: usize) -> (usize, usize) {
        let r0 = i * self.bq;
        (r0, self.bq.min(self.tq - r0))
    }
    fn ktile(&self, j: usize) -> (usize, usize) {
        let c0 = j * self.bk;
        (c0, self.bk.min(self.tk - c0))
    }
    /// Key tiles a query tile starting at r0 with `len` rows has to visit: 0..n.
    fn ktiles_for(&self, r0: usize, len: usize) -> usize {
        self.visible(r0 + len - 1).div_ceil(self.bk)
    }
    /// First query tile that sees any key of the key tile starting at c0.
    fn first_qtile_for(&self, c0: usize) -> usize {
        if self.causal {
            c0.saturating_sub(self.tk - self.tq) / self.bq
        } else {
            0
        }
    }
}

/// Columns (within a key tile starting at c0, `width` wide) that rows [r0+i0, r0+i1)
/// need, rounded up to whole 16-lane chunks.
#[inline(always)]
fn cols_needed<T: Elem>(dm: &Dims<T>, r0: usize, c0: usize, width: usize, i1: usize) -> usize {
    let vis = dm.visible(r0 + i1 - 1).saturating_sub(c0).min(width);
    (vis.div_ceil(L) * L).min(width)
}

/// Writes Kᵀ of one (b, h) as key tiles: tile j is a contiguous [D, width_j] block at
/// offset c0·D, so that S = Q·Kᵀ reads B rows contiguously.
fn pack_transposed<T: Elem>(dm: &Dims<T>, src: &[T], dst: &mut [T]) {
    let d = dm.d;
    for j in 0..dm.n_ktiles() {
        let (c0, w) = dm.ktile(j);
        let blk = &mut dst[c0 * d..(c0 + w) * d];
        for c in 0..w {
            let row = &src[(c0 + c) * d..(c0 + c + 1) * d];
            for (dd, &x) in row.iter().enumerate() {
                blk[dd * w + c] = x;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Instruction-set dispatch: the tile functions are instantiated once per ISA so that the
// inlined simd helpers are compiled with those target features.

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Isa {
    Generic,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

fn isa() -> Isa {
    static ISA: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
    *ISA.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512vl")
                && std::arch::is_x86_feature_detected!("fma")
            {
                return Isa::Avx512;
            }
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                return Isa::Avx2;
            }
        }
        Isa::Generic
    })
}

/// Defines `$name` dispatching on [`isa`] to `$imp` compiled for each instruction set.
macro_rules! dispatched {
    ($name:ident, $imp:ident, ($($arg:ident : $ty:ty),*)) => {
        #[allow(clippy::too_many_arguments)]
        fn $name<T: Elem>($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn avx512<T: Elem>($($arg: $ty),*) {
                    $imp::<T>($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn avx2<T: Elem>($($arg: $ty),*) {
                    $imp::<T>($($arg),*)
                }
                match isa() {
                    // SAFETY: the features were detected at run time in `isa`.
                    Isa::Avx512 => return unsafe { avx512::<T>($($arg),*) },
                    Isa::Avx2 => return unsafe { avx2::<T>($($arg),*) },
                    Isa::Generic => {}
                }
            }
            $imp::<T>($($arg),*)
        }
    };
}

// ---------------------------------------------------------------------------------------
// Forward

/// Inputs of one (b, h): q [Tq, D], k and v [Tk, D], kt = packed Kᵀ.
struct Head<'a, T> {
    q: &'a [T],
    k: &'a [T],
    v: &'a [T],
    kt: &'a [T],
}

dispatched!(fwd_tile, fwd_tile_impl, (dm: &Dims<T>, hd: &Head<T>, i: usize, o: &mut [T], lse: &mut [T]));

/// One query tile i of one head: o [len, D] and lse [len] are its rows of the outputs.
#[inline(always)]
fn fwd_tile_impl<T: Elem>(dm: &Dims<T>, hd: &Head<T>, i: usize, o: &mut [T], lse: &mut [T]) {
    let d = dm.d;
    let (r0, br) = dm.qtile(i);
    let q = &hd.q[r0 * d..(r0 + br) * d];
    let mut s = vec![T::ZERO; br * dm.bk];
    let mut m = vec![T::NEG_INF; br];
    let mut l = vec![T::ZERO; br];
    o.fill(T::ZERO);
    for j in 0..dm.ktiles_for(r0, br) {
        let (c0, bc) = dm.ktile(j);
        let kt = &hd.kt[c0 * d..(c0 + bc) * d];
        let ncols = |i0: usize, i1: usize| cols_needed(dm, r0 + i0, c0, bc, i1 - i0);
        // S = Q_i·K_jᵀ  [br, bc]
        let qa = Strided {
            data: q,
            rs: d,
            cs: 1,
        };
        simd::gemm(br, bc, d, qa, kt, bc, &mut s, bc, false, ncols, |_, _| {
            (0, d)
        });
        for r in 0..br {
            let row = &mut s[r * bc..(r + 1) * bc];
            let vis = dm.visible(r0 + r).saturating_sub(c0).min(bc);
            let mx = simd::scale_max(&mut row[..vis], dm.scale);
            let m_new = if mx > m[r] { mx } else { m[r] };
            if m_new == T::NEG_INF {
                row.fill(T::ZERO);
                continue;
            }
            let sum = simd::exp_shift_sum(&mut row[..vis], m_new);
            row[vis..].fill(T::ZERO);
            let alpha = (m[r] - m_new).exp();
            l[r] = l[r].mul_add(alpha, sum);
            m[r] = m_new;
            if alpha != T::ONE {
                simd::scale_in_place(&mut o[r * d..(r + 1) * d], alpha);
            }
        }
        // O_i += P·V_j  [br, bc]·[bc, D]; the zero tail of P's diagonal rows is skipped.
        let pa = Strided {
            data: &s[..],
            rs: bc,
            cs: 1,
        };
        let v = &hd.v[c0 * d..(c0 + bc) * d];
        let krange = |i0: usize, i1: usize| (0, cols_needed(dm, r0 + i0, c0, bc, i1 - i0));
        simd::gemm(br, d, bc, pa, v, d, o, d, true, |_, _| d, krange);
    }
    for r in 0..br {
        if l[r] > T::ZERO {
            simd::scale_in_place(&mut o[r * d..(r + 1) * d], T::ONE / l[r]);
            lse[r] = m[r] + l[r].ln();
        } else {
            // No visible key (not reachable with Tq <= Tk): output 0, and +inf makes
            // the backward's P = exp(s - lse) exactly 0 for this row.
            lse[r] = T::INF;
        }
    }
}

dispatched!(single_query_head, single_query_impl, (dm: &Dims<T>, hd: &Head<T>, o: &mut [T], p: &mut [T]));

/// The sampling path, Tq = 1 and no gradient: one dot product per cached key and one
/// axpy per value, no transposed copy of K. o [D], p [Tk] scratch.
#[inline(always)]
fn single_query_impl<T: Elem>(dm: &Dims<T>, hd: &Head<T>, o: &mut [T], p: &mut [T]) {
    let d = dm.d;
    let n = dm.visible(0);
    for (c, pc) in p[..n].iter_mut().enumerate() {
        *pc = simd::dot(hd.q, &hd.k[c * d..(c + 1) * d]);
    }
    let m = simd::scale_max(&mut p[..n], dm.scale);
    let sum = simd::exp_shift_sum(&mut p[..n], m);
    o.fill(T::ZERO);
    for (c, &pc) in p[..n].iter().enumerate() {
        simd::axpy(pc, &hd.v[c * d..(c + 1) * d], o);
    }
    simd::scale_in_place(o, T::ONE / sum);
}

/// Whether one task per (b, h) balances the threads: tiles are only split across
/// threads when there are few heads. Both schedules compute every tile identically.
fn heads_keep_threads_busy(bh: usize) -> bool {
    let threads = rayon::current_num_threads();
    bh.is_multiple_of(threads) || bh >= 4 * threads
}

/// O [BH·Tq·D] and, when asked, the log-sum-exp [BH·Tq].
fn forward<T: Elem>(dm: &Dims<T>, q: &[T], k: &[T], v: &[T], want_lse: bool) -> (Vec<T>, Vec<T>) {
    let (tq, tk, d) = (dm.tq, dm.tk, dm.d);
    let mut out = vec![T::ZERO; dm.bh * tq * d];
    if tq == 0 || d == 0 {
        return (out, vec![T::ZERO; dm.bh * tq]);
    }
    if tq == 1 && !want_lse {
        let head = |bh: usize, o: &mut [T]| {
            let mut p = vec![T::ZERO; tk];
            let kk = &k[bh * tk * d..(bh + 1) * tk * d];
            let hd = Head {
                q: &q[bh * d..(bh + 1) * d],
                k: kk,
                v: &v[bh * tk * d..(bh + 1) * tk * d],
                kt: kk,
            };
            single_query_head(dm, &hd, o, &mut p);
        };
        // A decoding step is tiny: threads only pay off with many heads of long caches.
        if dm.bh * tk * d >= 1 << 18 {
            out.par_chunks_mut(d)
                .enumerate()
                .for_each(|(bh, o)| head(bh, o));
        } else {
            out.chunks_mut(d)
                .enumerate()
                .for_each(|(bh, o)| head(bh, o));
        }
        return (out, Vec::new());
    }
    let mut lse = vec![T::ZERO; dm.bh * tq];
    let per_head = |bh: usize| {
        (
            &q[bh * tq * d..(bh + 1) * tq * d],
            &k[bh * tk * d..(bh + 1) * tk * d],
            &v[bh * tk * d..(bh + 1) * tk * d],
        )
    };
    if heads_keep_threads_busy(dm.bh) {
        // One task per head, Kᵀ packed into a per-thread scratch: no K-sized temporary
        // (fresh large buffers cost page faults on every call).
        out.par_chunks_mut(tq * d)
            .zip(lse.par_chunks_mut(tq))
            .enumerate()
            .for_each_init(Vec::new, |kt, (bh, (o_bh, l_bh))| {
                let (q, k, v) = per_head(bh);
                kt.resize(tk * d, T::ZERO);
                pack_transposed(dm, k, kt);
                let hd = Head { q, k, v, kt };
                for (i, (o, l)) in o_bh
                    .chunks_mut(dm.bq * d)
                    .zip(l_bh.chunks_mut(dm.bq))
                    .enumerate()
                {
                    fwd_tile(dm, &hd, i, o, l);
                }
            });
        return (out, lse);
    }
    // Few heads: query tiles in parallel too, sharing a packed Kᵀ.
    let mut kt = vec![T::ZERO; k.len()];
    kt.par_chunks_mut(tk * d)
        .zip(k.par_chunks(tk * d))
        .for_each(|(dst, src)| pack_transposed(dm, src, dst));
    out.par_chunks_mut(tq * d)
        .zip(lse.par_chunks_mut(tq))
        .enumerate()
        .for_each(|(bh, (o_bh, l_bh))| {
            let (q, k, v) = per_head(bh);
            let hd = Head {
                q,
                k,
                v,
                kt: &kt[bh * tk * d..(bh + 1) * tk * d],
            };
            o_bh.par_chunks_mut(dm.bq * d)
                .zip(l_bh.par_chunks_mut(dm.bq))
                .enumerate()
                .for_each(|(i, (o, l))| fwd_tile(dm, &hd, i, o, l));
        });
    (out, lse)
}

// ---------------------------------------------------------------------------------------
// Backward

/// Inputs of one (b, h) for the backward.
struct GradHead<'a, T> {
    x: Head<'a, T>,
    /// Packed Vᵀ, same layout as `kt`.
    vt: &'a [T],
    /// dO [Tq, D]
    go: &'a [T],
    lse: &'a [T],
    delta: &'a [T],
}

/// Scratch for one (query tile, key tile) pair.
struct PairBufs<T> {
    p: Vec<T>,
    ds: Vec<T>,
}

impl<T: Elem> PairBufs<T> {
    fn new<U>(dm: &Dims<U>) -> Self {
        Self {
            p: vec![T::ZERO; dm.bq * dm.bk],
            ds: vec![T::ZERO; dm.bq * dm.bk],
        }
    }
}

/// Recomputes P_ij and dS_ij (already multiplied by the softmax scale) into `bufs`.
/// Returns (r0, br, c0, bc). With `dv`, also does dV_j += P_ijᵀ·dO_i.
#[inline(always)]
fn pair_ds<T: Elem>(
    dm: &Dims<T>,
    g: &GradHead<T>,
    i: usize,
    j: usize,
    bufs: &mut PairBufs<T>,
    dv: Option<&mut [T]>,
) -> (usize, usize, usize, usize) {
    let d = dm.d;
    let (r0, br) = dm.qtile(i);
    let (c0, bc) = dm.ktile(j);
    let q = &g.x.q[r0 * d..(r0 + br) * d];
    let go = &g.go[r0 * d..(r0 + br) * d];
    let kt = &g.x.kt[c0 * d..(c0 + bc) * d];
    let vt = &g.vt[c0 * d..(c0 + bc) * d];
    let ncols = |i0: usize, i1: usize| cols_needed(dm, r0 + i0, c0, bc, i1 - i0);
    let p = &mut bufs.p[..br * bc];
    simd::gemm(
        br,
        bc,
        d,
        Strided {
            data: q,
            rs: d,
            cs: 1,
        },
        kt,
        bc,
        p,
        bc,
        false,
        ncols,
        |_, _| (0, d),
    );
    for r in 0..br {
        let row = &mut p[r * bc..(r + 1) * bc];
        let vis = dm.visible(r0 + r).saturating_sub(c0).min(bc);
        simd::exp_scale_shift(&mut row[..vis], dm.scale, g.lse[r0 + r]);
        row[vis..].fill(T::ZERO);
    }
    if let Some(dv) = dv {
        // dV_j += Pᵀ·dO_i: key rows kr only receive from query rows that see them.
        let qrows = |k0: usize, _k1: usize| (first_row_seeing(dm, r0, c0 + k0), br);
        simd::gemm(
            bc,
            d,
            br,
            Strided {
                data: &p[..],
                rs: 1,
                cs: bc,
            },
            go,
            d,
            dv,
            d,
            true,
            |_, _| d,
            qrows,
        );
    }
    let ds = &mut bufs.ds[..br * bc];
    simd::gemm(
        br,
        bc,
        d,
        Strided {
            data: go,
            rs: d,
            cs: 1,
        },
        vt,
        bc,
        ds,
        bc,
        false,
        ncols,
        |_, _| (0, d),
    );
    for r in 0..br {
        let vis = dm.visible(r0 + r).saturating_sub(c0).min(bc);
        let dl = g.delta[r0 + r];
        let (prow, drow) = (&p[r * bc..(r + 1) * bc], &mut ds[r * bc..(r + 1) * bc]);
        for (x, &pv) in drow[..vis].iter_mut().zip(&prow[..vis]) {
            *x = pv * (*x - dl) * dm.scale;
        }
        drow[vis..].fill(T::ZERO);
    }
    (r0, br, c0, bc)
}

/// Index (within the query tile starting at r0) of the first row that sees key c.
#[inline(always)]
fn first_row_seeing<T: Elem>(dm: &Dims<T>, r0: usize, c: usize) -> usize {
    if dm.causal {
        c.saturating_sub(dm.tk - dm.tq).saturating_sub(r0)
    } else {
        0
    }
}

/// dK_j += dSᵀ·Q_i (rows of dK_j only from query rows that see them).
#[inline(always)]
fn acc_dk<T: Elem>(
    dm: &Dims<T>,
    g: &GradHead<T>,
    ds: &[T],
    (r0, br, c0, bc): (usize, usize, usize, usize),
    dk: &mut [T],
) {
    let d = dm.d;
    let q = &g.x.q[r0 * d..(r0 + br) * d];
    let qrows = |k0: usize, _k1: usize| (first_row_seeing(dm, r0, c0 + k0), br);
    simd::gemm(
        bc,
        d,
        br,
        Strided {
            data: &ds[..br * bc],
            rs: 1,
            cs: bc,
        },
        q,
        d,
        dk,
        d,
        true,
        |_, _| d,
        qrows,
    );
}

/// dQ_i += dS·K_j.
#[inline(always)]
fn acc_dq<T: Elem>(
    dm: &Dims<T>,
    g: &GradHead<T>,
    ds: &[T],
    (r0, br, c0, bc): (usize, usize, usize, usize),
    dq: &mut [T],
) {
    let d = dm.d;
    let k = &g.x.k[c0 * d..(c0 + bc) * d];
    let krange = |i0: usize, i1: usize| (0, cols_needed(dm, r0 + i0, c0, bc, i1 - i0));
    simd::gemm(
        br,
        d,
        bc,
        Strided {
            data: &ds[..br * bc],
            rs: bc,
            cs: 1,
        },
        k,
        d,
        dq,
        d,
        true,
        |_, _| d,
        krange,
    );
}

dispatched!(bwd_head, bwd_head_impl, (dm: &Dims<T>, g: &GradHead<T>, dq: &mut [T], dk: &mut [T], dv: &mut [T]));

/// One sweep over a whole head: key tiles outer (dK_j, dV_j finished per j), query
/// tiles inner, dQ accumulated across the sweep in j order.
#[inline(always)]
fn bwd_head_impl<T: Elem>(dm: &Dims<T>, g: &GradHead<T>, dq: &mut [T], dk: &mut [T], dv: &mut [T]) {
    let d = dm.d;
    let mut bufs = PairBufs::new(dm);
    for j in 0..dm.n_ktiles() {
        let (c0, bc) = dm.ktile(j);
        for i in dm.first_qtile_for(c0)..dm.n_qtiles() {
            let dkj = &mut dk[c0 * d..(c0 + bc) * d];
            let dvj = &mut dv[c0 * d..(c0 + bc) * d];
            let t = pair_ds(dm, g, i, j, &mut bufs, Some(dvj));
            acc_dk(dm, g, &bufs.ds, t, dkj);
            let (r0, br, _, _) = t;
            acc_dq(dm, g, &bufs.ds, t, &mut dq[r0 * d..(r0 + br) * d]);
        }
    }
}

dispatched!(bwd_ktile, bwd_ktile_impl, (dm: &Dims<T>, g: &GradHead<T>, j: usize, dk: &mut [T], dv: &mut [T]));

/// Key-tile pass: dK_j and dV_j (rows of tile j), query tiles ascending.
#[inline(always)]
fn bwd_ktile_impl<T: Elem>(dm: &Dims<T>, g: &GradHead<T>, j: usize, dk: &mut [T], dv: &mut [T]) {
    let mut bufs = PairBufs::new(dm);
    let (c0, _) = dm.ktile(j);
    for i in dm.first_qtile_for(c0)..dm.n_qtiles() {
        let t = pair_ds(dm, g, i, j, &mut bufs, Some(&mut *dv));
        acc_dk(dm, g, &bufs.ds, t, dk);
    }
}

dispatched!(bwd_qtile, bwd_qtile_impl, (dm: &Dims<T>, g: &GradHead<T>, i: usize, dq: &mut [T]));

/// Query-tile pass: dQ_i, key tiles ascending.
#[inline(always)]
fn bwd_qtile_impl<T: Elem>(dm: &Dims<T>, g: &GradHead<T>, i: usize, dq: &mut [T]) {
    let mut bufs = PairBufs::new(dm);
    let (r0, br) = dm.qtile(i);
    for j in 0..dm.ktiles_for(r0, br) {
        let t = pair_ds(dm, g, i, j, &mut bufs, None);
        acc_dq(dm, g, &bufs.ds, t, dq);
    }
}

dispatched!(row_dots, row_dots_impl, (dm: &Dims<T>, go: &[T], o: &[T], delta: &mut [T]));

/// δ_r = rowsum(dO_r ∘ O_r) for one head, with the same fused multiply-add chain as a
/// gemm entry (see [`simd::dot_seq`]); compiled per ISA so that mul_add is one instruction.
#[inline(always)]
fn row_dots_impl<T: Elem>(dm: &Dims<T>, go: &[T], o: &[T], delta: &mut [T]) {
    let d = dm.d;
    for (r, x) in delta.iter_mut().enumerate() {
        *x = simd::dot_seq(&go[r * d..(r + 1) * d], &o[r * d..(r + 1) * d]);
    }
}

/// (dQ, dK, dV) from the inputs, the output O, dO and the log-sum-exp.
#[allow(clippy::too_many_arguments)]
fn backward<T: Elem>(
    dm: &Dims<T>,
    q: &[T],
    k: &[T],
    v: &[T],
    o: &[T],
    go: &[T],
    lse: &[T],
) -> (Vec<T>, Vec<T>, Vec<T>) {
    let (tq, tk, d) = (dm.tq, dm.tk, dm.d);
    let mut dq = vec![T::ZERO; q.len()];
    let mut dk = vec![T::ZERO; k.len()];
    let mut dv = vec![T::ZERO; v.len()];
    if tq == 0 || d == 0 {
        return (dq, dk, dv);
    }
    if heads_keep_threads_busy(dm.bh) {
        // One task per head with per-thread scratch for Kᵀ, Vᵀ and δ.
        dq.par_chunks_mut(tq * d)
            .zip(dk.par_chunks_mut(tk * d))
            .zip(dv.par_chunks_mut(tk * d))
            .enumerate()
            .for_each_init(
                || (Vec::new(), Vec::new(), Vec::new()),
                |(kt, vt, delta), (bh, ((dq, dk), dv))| {
                    let (kh, vh) = (
                        &k[bh * tk * d..(bh + 1) * tk * d],
                        &v[bh * tk * d..(bh + 1) * tk * d],
                    );
                    let (goh, oh) = (
                        &go[bh * tq * d..(bh + 1) * tq * d],
                        &o[bh * tq * d..(bh + 1) * tq * d],
                    );
                    kt.resize(tk * d, T::ZERO);
                    vt.resize(tk * d, T::ZERO);
                    delta.resize(tq, T::ZERO);
                    pack_transposed(dm, kh, kt);
                    pack_transposed(dm, vh, vt);
                    row_dots(dm, goh, oh, delta);
                    let g = GradHead {
                        x: Head {
                            q: &q[bh * tq * d..(bh + 1) * tq * d],
                            k: kh,
                            v: vh,
                            kt,
                        },
                        vt,
                        go: goh,
                        lse: &lse[bh * tq..(bh + 1) * tq],
                        delta,
                    };
                    bwd_head(dm, &g, dq, dk, dv);
                },
            );
        return (dq, dk, dv);
    }
    let mut delta = vec![T::ZERO; dm.bh * tq];
    delta.par_chunks_mut(tq).enumerate().for_each(|(bh, dl)| {
        row_dots(
            dm,
            &go[bh * tq * d..(bh + 1) * tq * d],
            &o[bh * tq * d..(bh + 1) * tq * d],
            dl,
        )
    });
    let mut kt = vec![T::ZERO; k.len()];
    let mut vt = vec![T::ZERO; v.len()];
    kt.par_chunks_mut(tk * d)
        .zip(vt.par_chunks_mut(tk * d))
        .enumerate()
        .for_each(|(bh, (kd, vd))| {
            pack_transposed(dm, &k[bh * tk * d..(bh + 1) * tk * d], kd);
            pack_transposed(dm, &v[bh * tk * d..(bh + 1) * tk * d], vd);
        });
    let head = |bh: usize| GradHead {
        x: Head {
            q: &q[bh * tq * d..(bh + 1) * tq * d],
            k: &k[bh * tk * d..(bh + 1) * tk * d],
            v: &v[bh * tk * d..(bh + 1) * tk * d],
            kt: &kt[bh * tk * d..(bh + 1) * tk * d],
        },
        vt: &vt[bh * tk * d..(bh + 1) * tk * d],
        go: &go[bh * tq * d..(bh + 1) * tq * d],
        lse: &lse[bh * tq..(bh + 1) * tq],
        delta: &delta[bh * tq..(bh + 1) * tq],
    };
    dk.par_chunks_mut(tk * d)
        .zip(dv.par_chunks_mut(tk * d))
        .enumerate()
        .for_each(|(bh, (dk, dv))| {
            let g = head(bh);
            dk.par_chunks_mut(dm.bk * d)
                .zip(dv.par_chunks_mut(dm.bk * d))
                .enumerate()
                .for_each(|(j, (dk, dv))| bwd_ktile(dm, &g, j, dk, dv));
        });
    dq.par_chunks_mut(tq * d).enumerate().for_each(|(bh, dq)| {
        let g = head(bh);
        dq.par_chunks_mut(dm.bq * d)
            .enumerate()
            .for_each(|(i, dq)| bwd_qtile(dm, &g, i, dq));
    });
    (dq, dk, dv)
}

// ---------------------------------------------------------------------------------------
// The candle op

enum Lse {
    F32(Vec<f32>),
    F64(Vec<f64>),
}

/// The custom op; holds the forward's log-sum-exp for the backward when a gradient
/// is tracked (the op lives in the graph behind an Arc).
struct FusedAttention {
    opts: FusedOptions,
    save_lse: bool,
    lse: Mutex<Option<Lse>>,
}

fn dims_of<T: Elem>(opts: &FusedOptions, lq: &Layout, lk: &Layout) -> Result<Dims<T>> {
    let (b, h, tq, d) = lq.shape().dims4()?;
    let tk = lk.shape().dims4()?.2;
    Ok(Dims {
        bh: b * h,
        tq,
        tk,
        d,
        causal: opts.causal,
        bq: opts.block_q,
        bk: opts.block_k,
        scale: T::from_f64(1.0 / (d.max(1) as f64).sqrt()),
    })
}

fn contiguous<'a, T>(data: &'a [T], l: &Layout) -> Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => bail!("fused attention: non-contiguous operand"),
    }
}

impl FusedAttention {
    fn fwd_typed<T: Elem + candle_core::WithDType>(
        &self,
        q: &[T],
        k: &[T],
        v: &[T],
        lq: &Layout,
        lk: &Layout,
    ) -> Result<(Vec<T>, Vec<T>)> {
        let dm = dims_of::<T>(&self.opts, lq, lk)?;
        Ok(forward(
            &dm,
            contiguous(q, lq)?,
            contiguous(k, lk)?,
            v,
            self.save_lse,
        ))
    }

    fn bwd_typed<T: Elem + candle_core::WithDType>(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        res: &Tensor,
        grad: &Tensor,
        saved: Option<&[T]>,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let grad = grad.contiguous()?;
        let res = res.contiguous()?;
        let (sq, lq) = q.storage_and_layout();
        let (sk, lk) = k.storage_and_layout();
        let (sv, lv) = v.storage_and_layout();
        let (so, lo) = res.storage_and_layout();
        let (sg, lg) = grad.storage_and_layout();
        let dm = dims_of::<T>(&self.opts, lq, lk)?;
        let (qs, ks, vs) = (
            storage_slice::<T>(&sq, lq)?,
            storage_slice::<T>(&sk, lk)?,
            storage_slice::<T>(&sv, lv)?,
        );
        let recomputed;
        let lse = match saved {
            Some(l) => l,
            None => {
                recomputed = forward(&dm, qs, ks, vs, true).1;
                &recomputed
            }
        };
        let (dq, dk, dv) = backward(
            &dm,
            qs,
            ks,
            vs,
            storage_slice::<T>(&so, lo)?,
            storage_slice::<T>(&sg, lg)?,
            lse,
        );
        let dev = q.device();
        Ok((
            Tensor::from_vec(dq, lq.shape(), dev)?,
            Tensor::from_vec(dk, lk.shape(), dev)?,
            Tensor::from_vec(dv, lv.shape(), dev)?,
        ))
    }
}

impl CustomOp3 for FusedAttention {
    fn name(&self) -> &'static str {
        "fused-attention"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let shape = l1.shape().clone();
        match (s1, s2, s3) {
            (CpuStorage::F32(q), CpuStorage::F32(k), CpuStorage::F32(v)) => {
                let (o, lse) = self.fwd_typed(q, k, contiguous(v, l3)?, l1, l2)?;
                if self.save_lse {
                    *self.lse.lock().unwrap() = Some(Lse::F32(lse));
                }
                Ok((CpuStorage::F32(o), shape))
            }
            (CpuStorage::F64(q), CpuStorage::F64(k), CpuStorage::F64(v)) => {
                let (o, lse) = self.fwd_typed(q, k, contiguous(v, l3)?, l1, l2)?;
                if self.save_lse {
                    *self.lse.lock().unwrap() = Some(Lse::F64(lse));
                }
                Ok((CpuStorage::F64(o), shape))
            }
            _ => bail!("fused attention: f32 or f64 q, k, v of one dtype only"),
        }
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let saved = self.lse.lock().unwrap();
        let (dq, dk, dv) = match (q.dtype(), saved.as_ref()) {
            (candle_core::DType::F32, Some(Lse::F32(l))) => {
                self.bwd_typed::<f32>(q, k, v, res, grad, Some(l))?
            }
            (candle_core::DType::F32, _) => self.bwd_typed::<f32>(q, k, v, res, grad, None)?,
            (candle_core::DType::F64, Some(Lse::F64(l))) => {
                self.bwd_typed::<f64>(q, k, v, res, grad, Some(l))?
            }
            (candle_core::DType::F64, _) => self.bwd_typed::<f64>(q, k, v, res, grad, None)?,
            (dt, _) => bail!("fused attention: unsupported dtype {dt:?}"),
        };
        Ok((Some(dq), Some(dk), Some(dv)))
    }
}

// ---------------------------------------------------------------------------------------
// Slice entry points for the native training step (`model::native`), which owns its
// buffers and bypasses candle's graph, and for the benchmark of the kernel as it calls it.

fn self_dims(bh: usize, t: usize, d: usize, causal: bool) -> Dims<f32> {
    let o = FusedOptions::default();
    Dims {
        bh,
        tq: t,
        tk: t,
        d,
        causal,
        bq: o.block_q,
        bk: o.block_k,
        scale: (1.0 / (d.max(1) as f64).sqrt()) as f32, // as `dims_of`
    }
}

/// Self-attention of contiguous q, k, v [BH, T, D] (f32) -> (O [BH, T, D], log-sum-exp
/// [BH, T]), exactly what [`attention`] computes for tensors. Causal unless `causal` is
/// false (the benchmark's non-causal comparison).
pub fn self_attention_forward_f32(
    (bh, t, d): (usize, usize, usize),
    causal: bool,
    q: &[f32],
    k: &[f32],
    v: &[f32],
) -> (Vec<f32>, Vec<f32>) {
    assert!(q.len() == bh * t * d && k.len() == q.len() && v.len() == q.len());
    forward(&self_dims(bh, t, d, causal), q, k, v, true)
}

/// The backward of [`self_attention_forward_f32`] given dO: (dQ, dK, dV), each
/// [BH, T, D].
#[allow(clippy::too_many_arguments)]
pub fn self_attention_backward_f32(
    (bh, t, d): (usize, usize, usize),
    causal: bool,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    o: &[f32],
    go: &[f32],
    lse: &[f32],
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let n = bh * t * d;
    assert!(
        [k.len(), v.len(), o.len(), go.len()]
            .iter()
            .all(|&l| l == n)
            && q.len() == n
    );
    assert_eq!(lse.len(), bh * t);
    backward(&self_dims(bh, t, d, causal), q, k, v, o, go, lse)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn isa_is_detected() {
        println!("fused attention ISA: {:?}", isa());
    }
}
