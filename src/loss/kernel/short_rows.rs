//! The cross-entropy kernel for short rows: V ≤ 256 (tinylm's byte vocabulary), f32
//! logits, AVX-512.
//!
//! Such a row is at most 16 zmm registers, and its exponentials stay in registers
//! from pass B to pass C: no scratch row to store and reload, no staging block, no
//! pipeline bookkeeping. In the general kernel at V = 256 the scratch row's stores,
//! queued behind the gradient's streaming stores, were the hottest instructions
//! (`perf annotate`). Here:
//!
//! * the row after this one has its max taken (reading it from memory) before this
//!   row's exponentials, so that its loads and chain of maxima overlap them;
//! * the exponentials run four chunks at a time, step by step
//!   ([`exp_nonpos_group`]): one chunk's exp is a long dependency chain, and sixteen
//!   of them written one after the other leave the FMA units idle most of the row;
//! * the gradient g = a·e - b is computed from the registers and streamed past the
//!   cache when the row's chunks are whole lines (V a multiple of 16, the buffer on a
//!   64-byte line, as fresh gradients are); other rows are stored plainly (a caller's
//!   16-byte-aligned buffer runs no slower that way).
//!
//! Same bits as the general kernel (`super::row::row`), which the tests check at every
//! SIMD level: the lane sums run over the same elements in the same order, the
//! exponential is `fastmath::exp_f32_nonpos` step for step, the lanes are reduced
//! pairwise as `reduce_lanes` does, and the scalars come from the same `row_scalars`.
//! Only the max is taken in another order: max is exact, so that can only change the
//! sign of a zero max, which no output depends on (x - (±0) and exp agree,
//! lse = ±0 + ln s); NaN rows, where the order matters, are handed to the general
//! kernel (below).
//!
//! Rows that are not plain (ignored or out-of-range targets, a NaN or infinite max, a
//! NaN sum) go to the general kernel, which computes and reports them as always.

// `seq!` unrolls with literal indices, so chunk 0's arithmetic reads `4 * 0 + 0`.
#![allow(clippy::identity_op, clippy::erasing_op)]

use super::row::{
    first_max_at, flush, row, row_scalars, Params, RowIo, RowOut, RowScalars, RowScale, Scratch,
};
use crate::fastmath::{EXP_LN2_HI, EXP_LN2_LO, EXP_LOG2E, EXP_MAGIC, EXP_POLY};
use seq_macro::seq;
use std::arch::x86_64::*;
use std::mem::MaybeUninit;

/// The longest row kept in registers: 16 of the 32 zmm registers, which leaves room
/// for the exponential's temporaries.
pub(super) const MAX_V: usize = 256;

/// Jobs run here (`super::jobs::short_row_jobs`).
pub(super) static JOBS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The rows a call works on: `i0 .. i0 + outs.len()` of logits `x` [N, V] (all N
/// rows, V ≤ [`MAX_V`]) with their targets and gradient scales.
#[derive(Clone, Copy)]
pub(super) struct Rows<'a> {
    pub(super) x: &'a [f32],
    pub(super) targets: &'a [u32],
    pub(super) p: &'a Params,
    pub(super) scale: RowScale<'a>,
    pub(super) i0: usize,
}

/// Runs `r`'s rows: `outs` gets one record per row; `grad`, when given, holds exactly
/// those rows' gradients, every element of which is written. Streamed stores are not
/// fenced here (the caller fences at the job's end).
///
/// # Safety
/// The CPU must have AVX-512 F, BW and VL.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
pub(super) unsafe fn rows(
    r: Rows<'_>,
    outs: &mut [RowOut],
    grad: Option<&mut [MaybeUninit<f32>]>,
    sc: &mut Scratch<f32>,
) {
    assert!((1..=MAX_V).contains(&r.p.v) && r.p.softcap.is_none());
    JOBS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    // One copy per count of 16-lane chunks, so that every chunk loop is unrolled and
    // the row's chunks are registers, not a stack array.
    seq!(NC in 1..=16 {
        match r.p.v.div_ceil(16) {
            #(NC if r.p.label_smoothing == 0.0 => rows_of::<NC, false>(r, outs, grad, sc),
              NC => rows_of::<NC, true>(r, outs, grad, sc),)*
            _ => unreachable!(),
        }
    })
}

/// [`rows`] for V in 16·(NC - 1) + 1 ..= 16·NC, with or without label smoothing.
///
/// # Safety
/// The CPU must have AVX-512 F, BW and VL (with AVX2 and FMA).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
unsafe fn rows_of<const NC: usize, const SMOOTH: bool>(
    Rows {
        x,
        targets,
        p,
        scale,
        i0,
    }: Rows<'_>,
    outs: &mut [RowOut],
    mut grad: Option<&mut [MaybeUninit<f32>]>,
    sc: &mut Scratch<f32>,
) {
    let v = p.v;
    // Lanes of the last chunk that hold logits (1 ..= 16).
    let tail = v - (NC - 1) * 16;
    let tail_mask: __mmask16 = if tail == 16 {
        u16::MAX
    } else {
        (1 << tail) - 1
    };
    if outs.is_empty() {
        return;
    }
    let n_rows = outs.len();
    let row_at = |i: usize| &x[i * v..(i + 1) * v];
    // The max of the row after this one is taken before this row's exponentials, so
    // that its loads and its chain of maxima overlap them (one row is more
    // instructions than the out-of-order window holds).
    // SAFETY: AVX-512 F (this function's features); the row is v long.
    let mut m_next = unsafe { row_max::<NC>(row_at(i0), tail_mask) };
    for (k, o) in outs.iter_mut().enumerate() {
        let i = i0 + k;
        let xr = row_at(i);
        let m = m_next;
        if k + 1 < n_rows {
            // SAFETY: as above.
            m_next = unsafe { row_max::<NC>(row_at(i + 1), tail_mask) };
        }
        let target = targets[i];
        // The forward alone has no gradient to scale (and may be given no scales).
        let scale_i = match grad {
            None => 0.0,
            Some(_) => scale.of_row(i) as f32,
        };
        let mut g_row = grad.as_deref_mut().map(|g| &mut g[k * v..(k + 1) * v]);
        if p.ignore_index != Some(target) && (target as usize) < v {
            let t = target as usize;
            // SAFETY: AVX-512 F/BW/VL (this function's features); xr is v long.
            let done = unsafe {
                row_in_registers::<NC, SMOOTH>(
                    xr,
                    m,
                    t,
                    p,
                    scale_i,
                    tail_mask,
                    g_row.as_deref_mut(),
                )
            };
            if let Some(out) = done {
                *o = out;
                continue;
            }
        }
        // SAFETY: AVX-512 F/BW/VL (this function's features).
        *o = unsafe { general_row(xr, g_row, target, p, scale_i, sc) };
    }
}

/// A row that is not plain (ignored, target out of range, NaN or infinite logits):
/// the general kernel's `row`, which also reports the errors. Out of line and cold, so
/// that the general kernel is compiled once, not into each of the 32 `rows_of` copies.
///
/// # Safety
/// The CPU must have AVX-512 F, BW and VL (with AVX2 and FMA).
#[cold]
#[inline(never)]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
unsafe fn general_row(
    xr: &[f32],
    g: Option<&mut [MaybeUninit<f32>]>,
    target: u32,
    p: &Params,
    scale: f32,
    sc: &mut Scratch<f32>,
) -> RowOut {
    let io = match g {
        Some(g) => RowIo::Fresh(xr, g),
        None => RowIo::Separate(xr, None),
    };
    let mut pending = None;
    let out = row::<f32, f32>(io, &[], target, p, scale, sc, &mut pending);
    flush(&mut pending, sc);
    out
}

/// The max of a row (NaN entries may or may not be skipped: a NaN row is found by its
/// sum and handed to the general kernel, which reports it).
///
/// # Safety
/// The CPU must have AVX-512 F; `xr` holds V ≤ 16·NC logits and `tail_mask` has the
/// lanes of the last chunk that hold them.
#[inline(always)]
unsafe fn row_max<const NC: usize>(xr: &[f32], tail_mask: __mmask16) -> f32 {
    let mut mx = [_mm512_setzero_ps(); NC];
    seq!(C in 0..16 {
        if C < NC {
            mx[C] = load_chunk::<NC, C>(xr, tail_mask);
        }
    });
    // A tree over the chunks (halves of 8, 4, 2, 1: chunk C + half folds into C),
    // then across the lanes.
    seq!(H in 0..4 {
        seq!(C in 0..8 {
            {
                const HALF: usize = 8 >> H;
                if C < HALF && C + HALF < NC {
                    mx[C] = _mm512_max_ps(mx[C], mx[C + HALF]);
                }
            }
        });
    });
    _mm512_reduce_max_ps(mx[0])
}

/// Chunk C of a row: logits 16C .. 16C + 16, the last chunk's missing lanes -inf (exp
/// gives 0 there; they are kept out of the sums by the mask anyway).
///
/// # Safety
/// As [`row_max`], with C < NC.
#[inline(always)]
unsafe fn load_chunk<const NC: usize, const C: usize>(xr: &[f32], tail_mask: __mmask16) -> __m512 {
    let p = xr.as_ptr().add(16 * C);
    if C + 1 < NC {
        _mm512_loadu_ps(p)
    } else {
        _mm512_mask_loadu_ps(_mm512_set1_ps(f32::NEG_INFINITY), tail_mask, p)
    }
}

/// One plain row (target `t` in range, not ignored) with max `m`, in registers: `None`,
/// with nothing written, when the max is not finite or the sum is NaN.
///
/// # Safety
/// As [`row_max`]; `t` < V.
#[inline(always)]
unsafe fn row_in_registers<const NC: usize, const SMOOTH: bool>(
    xr: &[f32],
    m: f32,
    t: usize,
    p: &Params,
    scale: f32,
    tail_mask: __mmask16,
    g: Option<&mut [MaybeUninit<f32>]>,
) -> Option<RowOut> {
    debug_assert_eq!(xr.len().div_ceil(16), NC);
    if !m.is_finite() {
        return None; // -inf row, +inf or NaN in it: the general kernel reports it
    }
    let y_t = xr[t];
    let correct = first_max_at::<f32, f32>(xr, t, m);

    // Pass B: e = exp(x - m), s = Σ e and dsum = Σ (m - x) lane by lane in chunk order
    // (the row is in L1 since `row_max` read it).
    let vm = _mm512_set1_ps(m);
    let zero = _mm512_setzero_ps();
    let neg_inf = _mm512_set1_ps(f32::NEG_INFINITY);
    let mut e = [zero; NC];
    let mut s = zero;
    // Four chunks at a time, step by step (see `exp_nonpos_group`).
    seq!(Q in 0..4 {
        if 4 * Q < NC {
            let mut d = [neg_inf; 4];
            seq!(J in 0..4 {
                if 4 * Q + J < NC {
                    d[J] = _mm512_sub_ps(load_chunk::<NC, { 4 * Q + J }>(xr, tail_mask), vm);
                }
            });
            let eg = exp_nonpos_group(d);
            seq!(J in 0..4 {
                if 4 * Q + J < NC {
                    e[4 * Q + J] = eg[J];
                    s = if 4 * Q + J + 1 < NC {
                        _mm512_add_ps(s, eg[J])
                    } else {
                        _mm512_mask_add_ps(s, tail_mask, s, eg[J])
                    };
                }
            });
        }
    });
    let mut ds = zero;
    if SMOOTH {
        seq!(C in 0..16 {
            if C < NC {
                let d = _mm512_sub_ps(vm, load_chunk::<NC, C>(xr, tail_mask));
                ds = if C + 1 < NC {
                    _mm512_add_ps(ds, d)
                } else {
                    _mm512_mask_add_ps(ds, tail_mask, ds, d)
                };
            }
        });
    }
    let s = reduce_lanes(s);
    if s.is_nan() {
        return None; // a NaN logit (the max skipped it)
    }
    let RowScalars {
        loss,
        lse,
        a,
        b,
        hit,
    } = row_scalars(m, y_t, s, reduce_lanes(ds), p, scale, 1.0);

    // Pass C: g = a·e - b, minus `hit` at the target: a multiply then a subtract, as
    // the general kernel's. A line-aligned row of whole chunks is streamed past the
    // cache (it is not read again here), other rows are stored normally.
    if let Some(g) = g {
        let gp = g.as_mut_ptr() as *mut f32;
        let streamed = (gp as usize).is_multiple_of(64) && tail_mask == u16::MAX;
        let (va, vb, vhit) = (_mm512_set1_ps(a), _mm512_set1_ps(b), _mm512_set1_ps(hit));
        seq!(C in 0..16 {
            if C < NC {
                let mut gc = _mm512_sub_ps(_mm512_mul_ps(va, e[C]), vb);
                if t / 16 == C {
                    gc = _mm512_mask_sub_ps(gc, 1 << (t % 16), gc, vhit);
                }
                if streamed {
                    _mm512_stream_ps(gp.add(16 * C), gc);
                } else if C + 1 < NC {
                    _mm512_storeu_ps(gp.add(16 * C), gc);
                } else {
                    _mm512_mask_storeu_ps(gp.add(16 * C), tail_mask, gc);
                }
            }
        });
    }
    Some(RowOut {
        loss: loss as f64,
        lse: lse as f64,
        correct,
        counted: true,
        fault: None,
    })
}

/// One vector through [`exp_nonpos_group`], for `exp_matches_fastmath_bitwise`.
///
/// # Safety
/// The CPU must have AVX-512 F.
#[cfg(test)]
#[inline(always)]
unsafe fn exp_nonpos(x: __m512) -> __m512 {
    exp_nonpos_group([x])[0]
}

/// `fastmath::exp_f32_nonpos` on G vectors of 16 lanes, step for step (the same
/// roundings, so the same bits), each step on all G before the next: a vector's steps
/// form one long chain. Written one vector after the other, the chains' waiting
/// operations fill the scheduler and the FMA units idle; four vectors step by step
/// measured best (BENCHMARKS.md).
///
/// # Safety
/// The CPU must have AVX-512 F and FMA.
#[inline(always)]
unsafe fn exp_nonpos_group<const G: usize>(x: [__m512; G]) -> [__m512; G] {
    let magic = _mm512_set1_ps(EXP_MAGIC);
    let mut t = x;
    for j in 0..G {
        t[j] = _mm512_fmadd_ps(x[j], _mm512_set1_ps(EXP_LOG2E), magic);
    }
    let mut k = t;
    for j in 0..G {
        k[j] = _mm512_sub_ps(t[j], magic);
    }
    // (-k)·c + x is -(k·c) + x exactly: fnmadd.
    let mut r = x;
    for j in 0..G {
        r[j] = _mm512_fnmadd_ps(k[j], _mm512_set1_ps(EXP_LN2_HI), x[j]);
    }
    for j in 0..G {
        r[j] = _mm512_fnmadd_ps(k[j], _mm512_set1_ps(EXP_LN2_LO), r[j]);
    }
    let mut poly = [_mm512_set1_ps(EXP_POLY[0]); G];
    for &c in &EXP_POLY[1..] {
        for j in 0..G {
            poly[j] = _mm512_fmadd_ps(poly[j], r[j], _mm512_set1_ps(c));
        }
    }
    for j in 0..G {
        poly[j] = _mm512_mul_ps(poly[j], r[j]);
    }
    for j in 0..G {
        poly[j] = _mm512_add_ps(_mm512_fmadd_ps(poly[j], r[j], r[j]), _mm512_set1_ps(1.0));
    }
    let mut y = x;
    for j in 0..G {
        let ki = _mm512_sub_epi32(
            _mm512_castps_si512(t[j]),
            _mm512_set1_epi32(EXP_MAGIC.to_bits() as i32),
        );
        let scale = _mm512_castsi512_ps(_mm512_slli_epi32(
            _mm512_add_epi32(ki, _mm512_set1_epi32(127)),
            23,
        ));
        let v = _mm512_mul_ps(poly[j], scale);
        // Below -87 (including -inf) exactly 0; NaN compares false and stays NaN.
        let below = _mm512_cmp_ps_mask(x[j], _mm512_set1_ps(-87.0), _CMP_LT_OQ);
        y[j] = _mm512_mask_mov_ps(v, below, _mm512_setzero_ps());
    }
    y
}

/// Σ of the 16 lanes, pairwise as `super::row::reduce_lanes` (lane l + lane l + 8, then
/// + 4, + 2, + 1).
///
/// # Safety
/// The CPU must have AVX-512 F.
#[inline(always)]
unsafe fn reduce_lanes(v: __m512) -> f32 {
    let lo = _mm512_castps512_ps256(v);
    // The high half through the f64 extract: `_mm512_extractf32x8_ps` needs AVX-512 DQ.
    let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1));
    let a = _mm256_add_ps(lo, hi);
    let b = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    let c = _mm_add_ps(b, _mm_movehl_ps(b, b));
    _mm_cvtss_f32(_mm_add_ss(c, _mm_shuffle_ps(c, c, 1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The intrinsic exponential gives `exp_f32_nonpos`'s bits on the x ≤ 0 line.
    #[test]
    fn exp_matches_fastmath_bitwise() {
        if !std::is_x86_feature_detected!("avx512f") {
            println!("no AVX-512 on this CPU: nothing to compare");
            return;
        }
        let mut xs: Vec<f32> = (0..200_000).map(|i| -(i as f32) * 0.000_51).collect();
        xs.extend(crate::fastmath::NONPOS_EDGES);
        xs.push(f32::NAN);
        while !xs.len().is_multiple_of(16) {
            xs.push(-1.0);
        }
        let mut checked = 0;
        for c in xs.chunks_exact(16) {
            let mut got = [0f32; 16];
            // SAFETY: AVX-512 F was detected above.
            unsafe { _mm512_storeu_ps(got.as_mut_ptr(), exp_nonpos(_mm512_loadu_ps(c.as_ptr()))) };
            for (&x, &y) in c.iter().zip(&got) {
                let want = crate::fastmath::exp_f32_nonpos(x);
                assert!(
                    y.to_bits() == want.to_bits() || (y.is_nan() && want.is_nan()),
                    "x = {x}: {y} vs {want}"
                );
                checked += 1;
            }
        }
        println!("AVX-512 exp = exp_f32_nonpos bitwise at {checked} points -> PASS");
    }
}
