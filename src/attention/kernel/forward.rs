//! The forward: for each (batch·head, query tile of `block_q` rows), walk the key tiles
//! of `block_k` columns the tile can see: S = Q·Kᵀ in a tile buffer, online softmax in
//! the input precision (f32 for the model), O += P·V. Only O [B, H, Tq, D] and the
//! per-row log-sum-exp [B, H, Tq] survive; nothing grows with T².

use super::schedule::{heads_keep_threads_busy, pack_transposed, Dims, Head};
use super::tile_ops::{self as ops, Elem, Strided};
use crate::cpu::simd::dispatch;
use rayon::prelude::*;

dispatch!(fn fwd_tile<T: Elem>(
    dm: &Dims<T>,
    hd: &Head<T>,
    i: usize,
    o: &mut [T],
    lse: &mut [T],
) = fwd_tile_impl);

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
        let ncols = |i0: usize, i1: usize| dm.cols_needed(r0 + i0, c0, bc, i1 - i0);
        // S = Q_i·K_jᵀ  [br, bc]
        let qa = Strided {
            data: q,
            rs: d,
            cs: 1,
        };
        ops::gemm(br, bc, d, qa, kt, bc, &mut s, bc, false, ncols, |_, _| {
            (0, d)
        });
        for r in 0..br {
            let row = &mut s[r * bc..(r + 1) * bc];
            let vis = dm.visible(r0 + r).saturating_sub(c0).min(bc);
            let mx = ops::scale_max(&mut row[..vis], dm.scale);
            let m_new = if mx > m[r] { mx } else { m[r] };
            if m_new == T::NEG_INF {
                row.fill(T::ZERO);
                continue;
            }
            let sum = ops::exp_shift_sum(&mut row[..vis], m_new);
            row[vis..].fill(T::ZERO);
            let alpha = (m[r] - m_new).exp();
            l[r] = l[r].mul_add(alpha, sum);
            m[r] = m_new;
            if alpha != T::ONE {
                ops::scale_in_place(&mut o[r * d..(r + 1) * d], alpha);
            }
        }
        // O_i += P·V_j  [br, bc]·[bc, D]; the zero tail of P's diagonal rows is skipped.
        let pa = Strided {
            data: &s[..],
            rs: bc,
            cs: 1,
        };
        let v = &hd.v[c0 * d..(c0 + bc) * d];
        let krange = |i0: usize, i1: usize| (0, dm.cols_needed(r0 + i0, c0, bc, i1 - i0));
        ops::gemm(br, d, bc, pa, v, d, o, d, true, |_, _| d, krange);
    }
    for r in 0..br {
        if l[r] > T::ZERO {
            ops::scale_in_place(&mut o[r * d..(r + 1) * d], T::ONE / l[r]);
            lse[r] = m[r] + l[r].ln();
        } else {
            // No visible key (not reachable with Tq <= Tk): output 0, and +inf makes
            // the backward's P = exp(s - lse) exactly 0 for this row.
            lse[r] = T::INF;
        }
    }
}

dispatch!(fn single_query_head<T: Elem>(
    dm: &Dims<T>,
    hd: &Head<T>,
    o: &mut [T],
    p: &mut [T],
) = single_query_impl);

/// The sampling path, Tq = 1 and no gradient: one dot product per cached key and one
/// axpy per value, no transposed copy of K. o [D], p [Tk] scratch.
#[inline(always)]
fn single_query_impl<T: Elem>(dm: &Dims<T>, hd: &Head<T>, o: &mut [T], p: &mut [T]) {
    let d = dm.d;
    let n = dm.visible(0);
    for (c, pc) in p[..n].iter_mut().enumerate() {
        *pc = ops::dot(hd.q, &hd.k[c * d..(c + 1) * d]);
    }
    let m = ops::scale_max(&mut p[..n], dm.scale);
    let sum = ops::exp_shift_sum(&mut p[..n], m);
    o.fill(T::ZERO);
    for (c, &pc) in p[..n].iter().enumerate() {
        ops::axpy(pc, &hd.v[c * d..(c + 1) * d], o);
    }
    ops::scale_in_place(o, T::ONE / sum);
}

/// O [BH·Tq·D] and, when asked, the log-sum-exp [BH·Tq].
pub(crate) fn forward<T: Elem>(
    dm: &Dims<T>,
    q: &[T],
    k: &[T],
    v: &[T],
    want_lse: bool,
) -> (Vec<T>, Vec<T>) {
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
