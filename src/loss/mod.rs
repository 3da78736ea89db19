//! The loss core: cross-entropy over logits, and the output projection fused with it.
//!
//! Notation: N rows (N = B·T), V vocabulary, D hidden width.
//!
//! `cross_entropy` and `linear_cross_entropy` are the entry points the model and the
//! trainer call. `reference` holds the composed candle version of each, kept for tests
//! and benchmarks.

pub mod reference;

use candle_core::{Result, Tensor};

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
/// Returns a scalar for `Mean`/`Sum`, or [N] for `None`. Differentiable in `logits`.
pub fn cross_entropy(logits: &Tensor, targets: &Tensor, o: &CrossEntropyOptions) -> Result<Tensor> {
    reference::cross_entropy(logits, targets, o)
}

/// Cross-entropy of `hidden` [N, D] · `weight`ᵀ [D, V] against `targets` [N].
///
/// Differentiable in `hidden` and `weight`.
pub fn linear_cross_entropy(
    hidden: &Tensor,
    weight: &Tensor,
    targets: &Tensor,
    o: &CrossEntropyOptions,
) -> Result<Tensor> {
    reference::linear_cross_entropy(hidden, weight, targets, o)
}
