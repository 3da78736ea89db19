//! The loss core: cross-entropy over logits, and the output projection fused with it.
//!
//! Notation: N rows (N = B·T), V vocabulary, D hidden width.
//!
//! `cross_entropy` and `linear_cross_entropy` are the entry points the model and the
//! trainer call. On the CPU they run candle ops (`fused`; `linear`, the output
//! projection fused with the loss in row chunks) over the slice kernel (`kernel`, one
//! pass per row that writes the gradient once); `rows` is the bookkeeping between
//! options, rows and the reduced loss that every caller of the kernel shares, `head`
//! the output projection and loss on plain slices for the native training step, and
//! `direct` the loss with d(logits) outside the graph for a hand-written backward.
//! `reference` holds the composed candle version of each, kept for tests and
//! benchmarks, and used on other devices.

mod direct;
pub mod fused;
pub(crate) mod head;
pub mod kernel;
pub mod linear;
pub mod reference;
mod rows;

pub use direct::{cross_entropy_loss_and_grad, cross_entropy_loss_and_grad_into, GradElem};
pub use fused::cross_entropy_with_stats;
pub use kernel::short_row_jobs;
pub use rows::CrossEntropyStats;

use candle_core::{DType, Result, Tensor};

/// How per-row losses are combined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Reduction {
    /// Sum of the row losses divided by the count of non-ignored rows (or `normalizer`).
    #[default]
    Mean,
    /// Plain sum of the row losses.
    Sum,
    /// One loss per row, shape [N]; ignored rows are 0.
    None,
}

/// Options of the cross-entropy, mirroring PyTorch's `F.cross_entropy` where it has them.
#[derive(Debug, Clone, PartialEq)]
pub struct CrossEntropyOptions {
    pub reduction: Reduction,
    /// Rows whose target equals this contribute neither loss nor gradient.
    pub ignore_index: Option<u32>,
    /// PyTorch's label smoothing ε: the target distribution is (1-ε)·onehot + ε/V.
    pub label_smoothing: f32,
    /// Coefficient of lse² added to every non-ignored row (PaLM's z-loss).
    pub z_loss: f32,
    /// Logits are replaced by c·tanh(logits/c) before the softmax (Gemma-2's soft-cap).
    pub softcap: Option<f32>,
    /// With `Reduction::Mean`, divide by this instead of the local count of non-ignored
    /// rows: gradient accumulation passes the count over all micro-batches.
    pub normalizer: Option<f32>,
}

impl Default for CrossEntropyOptions {
    fn default() -> Self {
        Self {
            reduction: Reduction::Mean,
            ignore_index: None,
            label_smoothing: 0.0,
            z_loss: 0.0,
            softcap: None,
            normalizer: None,
        }
    }
}

/// Cross-entropy of `logits` [N, V] against `targets` [N] (u32).
///
/// Returns a scalar for `Mean`/`Sum`, or [N] for `None` (f32; f64 for f64 logits).
/// Differentiable in `logits`. Errors on NaN or +inf logits, on a row whose logits are
/// all -inf and on a target ≥ V that is not the ignore index.
pub fn cross_entropy(logits: &Tensor, targets: &Tensor, o: &CrossEntropyOptions) -> Result<Tensor> {
    if !logits.device().is_cpu() {
        return reference::cross_entropy(logits, targets, o);
    }
    Ok(fused::cross_entropy_with_stats(logits, targets, o)?.0)
}

/// Cross-entropy of `hidden` [N, D] · `weight`ᵀ [D, V] against `targets` [N].
///
/// Differentiable in `hidden` and `weight`. The N x V logits are never held whole
/// (on the CPU, with both inputs f32, both f64, both bf16 or both f16, a mix refused;
/// 16-bit inputs are computed in f32 with their gradients rounded once; on other
/// devices the composed reference).
pub fn linear_cross_entropy(
    hidden: &Tensor,
    weight: &Tensor,
    targets: &Tensor,
    o: &CrossEntropyOptions,
) -> Result<Tensor> {
    let float = |t: DType| matches!(t, DType::F32 | DType::F64 | DType::BF16 | DType::F16);
    // Two float types go to the fused function too, which refuses the mix by name.
    let fusable = hidden.device().is_cpu()
        && weight.device().is_cpu()
        && float(hidden.dtype())
        && float(weight.dtype());
    if !fusable {
        return reference::linear_cross_entropy(hidden, weight, targets, o);
    }
    linear::linear_cross_entropy(hidden, weight, targets, o)
}
