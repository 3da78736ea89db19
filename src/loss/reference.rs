//! The composed candle cross-entropy: every step an ordinary differentiable candle op.
//! Slow and memory-hungry (it materialises log-probabilities and masks), but obviously
//! right; the fused kernels are tested and benchmarked against it.

use super::{CrossEntropyOptions, Reduction};
use candle_core::Result;
use candle_core::{DType, Tensor, D};

/// See [`super::cross_entropy`]. Computed in f32 whatever the logits' dtype.
pub fn cross_entropy(logits: &Tensor, targets: &Tensor, o: &CrossEntropyOptions) -> Result<Tensor> {
    let (n, v) = logits.dims2()?;
    let mut x = logits.to_dtype(DType::F32)?; // [N, V]
    if let Some(c) = o.softcap {
        x = ((x / c as f64)?.tanh()? * c as f64)?;
    }
    // Subtracting the (constant) row max keeps exp() in range; it does not change lse.
    let m = x.max_keepdim(D::Minus1)?.detach(); // [N, 1]
    let lse = (x.broadcast_sub(&m)?.exp()?.sum_keepdim(D::Minus1)?.log()? + &m)?; // [N, 1]
    let logp = x.broadcast_sub(&lse)?; // [N, V]

    let targets = targets.to_dtype(DType::U32)?;
    let keep = match o.ignore_index {
        Some(ix) => targets.ne(ix)?, // [N] u8
        None => Tensor::ones(n, DType::U8, x.device())?,
    };
    let safe_targets = keep.where_cond(&targets, &targets.zeros_like()?)?; // [N]
    let nll = logp
        .gather(&safe_targets.unsqueeze(1)?, 1)?
        .squeeze(1)?
        .neg()?; // [N]
    let mut row = if o.label_smoothing > 0.0 {
        let eps = o.label_smoothing as f64;
        let smooth = (logp.sum(D::Minus1)?.neg()? / v as f64)?; // [N]
        ((nll * (1.0 - eps))? + (smooth * eps)?)?
    } else {
        nll
    };
    if o.z_loss > 0.0 {
        row = (row + (lse.squeeze(1)?.sqr()? * o.z_loss as f64)?)?;
    }
    let keep_f = keep.to_dtype(DType::F32)?;
    let row = (row * &keep_f)?; // ignored rows are exactly 0
    match o.reduction {
        Reduction::None => Ok(row),
        Reduction::Sum => row.sum_all(),
        Reduction::Mean => {
            let denom = match o.normalizer {
                Some(d) => d as f64,
                None => keep_f.sum_all()?.to_scalar::<f32>()? as f64,
            };
            // No counted rows: the loss is 0, not 0/0.
            row.sum_all()? / denom.max(1.0)
        }
    }
}

/// See [`super::linear_cross_entropy`]: the logits [N, V] are materialised whole.
pub fn linear_cross_entropy(
    hidden: &Tensor,
    weight: &Tensor,
    targets: &Tensor,
    o: &CrossEntropyOptions,
) -> Result<Tensor> {
    let logits = hidden.matmul(&weight.t()?)?; // [N, D] x [D, V] -> [N, V]
    cross_entropy(&logits, targets, o)
}
