//! The backward: recomputes P = exp(S·scale - lse) tile by tile,
//!   dV_j += P_ijᵀ·dO_i,  dP_ij = dO_i·V_jᵀ,  dS_ij = P_ij ∘ (dP_ij - δ_i)·scale,
//!   dK_j += dS_ijᵀ·Q_i,  dQ_i += dS_ij·K_j,   with δ_i = rowsum(dO_i ∘ O_i).
//! Determinism without atomics: every output row is written by exactly one task and
//! accumulated in a fixed order (dK_j, dV_j over i ascending, dQ_i over j ascending).
//! When B·H alone keeps the threads busy, one task per (b, h) does all of it in one
//! sweep; otherwise (small B·H) a key-tile pass produces dK, dV and a query-tile pass
//! produces dQ, recomputing S and dP once more. Both schedules perform the same
//! floating-point operations in the same order, so the result does not depend on the
//! thread count either.

use super::schedule::{heads_keep_threads_busy, pack_transposed, Dims, Head};
use super::tile_ops::{self as ops, Elem, Strided};
use crate::cpu::simd::dispatch;
use rayon::prelude::*;

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
    let ncols = |i0: usize, i1: usize| dm.cols_needed(r0 + i0, c0, bc, i1 - i0);
    let p = &mut bufs.p[..br * bc];
    ops::gemm(
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
        ops::exp_scale_shift(&mut row[..vis], dm.scale, g.lse[r0 + r]);
        row[vis..].fill(T::ZERO);
    }
    if let Some(dv) = dv {
        // dV_j += Pᵀ·dO_i: key rows kr only receive from query rows that see them.
        let qrows = |k0: usize, _k1: usize| (dm.first_row_seeing(r0, c0 + k0), br);
        ops::gemm(
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
    ops::gemm(
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
    let qrows = |k0: usize, _k1: usize| (dm.first_row_seeing(r0, c0 + k0), br);
    ops::gemm(
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
    let krange = |i0: usize, i1: usize| (0, dm.cols_needed(r0 + i0, c0, bc, i1 - i0));
    ops::gemm(
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

dispatch!(fn bwd_head<T: Elem>(
    dm: &Dims<T>,
    g: &GradHead<T>,
    dq: &mut [T],
    dk: &mut [T],
    dv: &mut [T],
) = bwd_head_impl);

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

dispatch!(fn bwd_ktile<T: Elem>(
    dm: &Dims<T>,
    g: &GradHead<T>,
    j: usize,
    dk: &mut [T],
    dv: &mut [T],
) = bwd_ktile_impl);

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

dispatch!(fn bwd_qtile<T: Elem>(
    dm: &Dims<T>,
    g: &GradHead<T>,
    i: usize,
    dq: &mut [T],
) = bwd_qtile_impl);

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

dispatch!(fn row_dots<T: Elem>(dm: &Dims<T>, go: &[T], o: &[T], delta: &mut [T]) = row_dots_impl);

/// δ_r = rowsum(dO_r ∘ O_r) for one head, with the same fused multiply-add chain as a
/// gemm entry (see [`ops::dot_seq`]); compiled per ISA so that mul_add is one instruction.
#[inline(always)]
fn row_dots_impl<T: Elem>(dm: &Dims<T>, go: &[T], o: &[T], delta: &mut [T]) {
    let d = dm.d;
    for (r, x) in delta.iter_mut().enumerate() {
        *x = ops::dot_seq(&go[r * d..(r + 1) * d], &o[r * d..(r + 1) * d]);
    }
}

/// (dQ, dK, dV) from the inputs, the output O, dO and the log-sum-exp.
#[allow(clippy::too_many_arguments)]
pub(crate) fn backward<T: Elem>(
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
