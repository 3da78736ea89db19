//! The tied output head fused with the loss on plain f32 slices, for a caller that owns
//! its buffers and its matrix products (the native training step): the slice-level
//! twin of `linear`'s candle op, in the same row chunks. For each chunk of c rows:
//!
//! ```text
//! logits_c = h_c · Wᵀ              [c, C] x [C, V] -> [c, V]
//! the row kernel turns logits_c into d(loss)/d(logits_c) in place
//! dh_c     = dlogits_c · W          [c, V] x [V, C] -> [c, C]
//! dW      += dlogits_cᵀ · h_c       [V, c] x [c, C] -> [V, C]
//! ```

use super::kernel::{self, KernelError, RowScale};
use super::linear::chunk_rows;
use super::rows::{count_rows, params, reduce, row_factor};
use super::{CrossEntropyOptions, Reduction};
use crate::cpu::{as_uninit, assume_init, uninit_vec};
use std::mem::MaybeUninit;

/// Why [`tied_head`] gave no loss.
#[derive(Debug)]
pub(crate) enum HeadError {
    /// Some logit is NaN or +inf: the step has no usable loss or gradient (a trainer
    /// skips it rather than stopping).
    NonFinite,
    /// Anything else the kernel rejects (a target outside the vocabulary), as a
    /// one-line error.
    Other(candle_core::Error),
}

/// A matrix operand: (data, row stride, column stride).
pub(crate) type Operand<'a> = (&'a [f32], usize, usize);

/// Loss of `hidden` [N, C] · `weight`ᵀ against `targets` [N], reduced as `o` says (mean
/// or sum), with d(loss)/d(hidden) [N, C] returned and d(loss)/d(weight) [V, C] *added
/// into* `dweight`.
///
/// `gemm((m, n, k), dst, acc, a, b)` is the caller's matrix product: dst [m, n] =
/// (dst if `acc`, else 0) + a [m, k] · b [k, n]; with `acc` false it writes every
/// entry of dst and reads none, so the first chunk's logits need no zero-fill.
///
/// On an error `dweight` may hold part of the gradient.
pub(crate) fn tied_head(
    (n, c, v): (usize, usize, usize),
    hidden: &[f32],
    weight: &[f32],
    targets: &[u32],
    o: &CrossEntropyOptions,
    dweight: &mut [f32],
    gemm: impl Fn((usize, usize, usize), &mut [MaybeUninit<f32>], bool, Operand, Operand),
) -> Result<(f64, Vec<f32>), HeadError> {
    if o.reduction == Reduction::None {
        let e = "linear_cross_entropy: the fused head reduces (mean or sum), not none";
        return Err(HeadError::Other(candle_core::Error::Msg(e.into())));
    }
    let p = params(o, v);
    let counted = count_rows(targets, o.ignore_index);
    let scale = RowScale::Uniform(row_factor(o, counted));
    let rows_per_chunk = chunk_rows(n, v);
    // Allocated by the first chunk (the largest), whose gemm writes all of it.
    let mut logits: Vec<f32> = Vec::new();
    let mut dh = vec![0f32; n * c];
    let mut outs = Vec::with_capacity(n);
    let mut s = 0;
    while s < n {
        let rows = rows_per_chunk.min(n - s);
        let hc = &hidden[s * c..(s + rows) * c];
        let logits_of = |d: &mut [MaybeUninit<f32>]| {
            gemm((rows, v, c), d, false, (hc, c, 1), (weight, 1, c)) // [c, C] x [C, V]
        };
        if logits.is_empty() {
            let mut fresh = uninit_vec(rows * v);
            logits_of(&mut fresh);
            // SAFETY: the gemm (acc = false) wrote all rows·v elements.
            logits = unsafe { assume_init(fresh) };
        } else {
            logits_of(as_uninit(&mut logits[..rows * v]));
        }
        let lg = &mut logits[..rows * v];
        match kernel::run_in_place::<f32>(lg, &targets[s..s + rows], &p, scale) {
            Ok(r) => outs.extend(r),
            Err(KernelError::NonFinite { .. }) => return Err(HeadError::NonFinite),
            Err(e) => return Err(HeadError::Other(e.into())),
        }
        let dhc = as_uninit(&mut dh[s * c..(s + rows) * c]);
        gemm((rows, c, v), dhc, false, (lg, v, 1), (weight, c, 1)); // [c, V] x [V, C]
        gemm(
            (v, c, rows),
            as_uninit(dweight),
            true,
            (lg, 1, v),
            (hc, c, 1),
        ); // [V, c] x [c, C]
        s += rows;
    }
    let loss = reduce(o, &outs, counted)[0];
    Ok((loss, dh))
}
