//! Causal multi-head self-attention: softmax(q·kᵀ·scale + causal mask)·v.
//!
//! Notation: B batch, H heads, T sequence length, D head width.
//! `causal_attention` is what the model calls; `reference` is the composed candle
//! version kept for tests and benchmarks.

pub mod reference;

use candle_core::{Result, Tensor};

/// Causal self-attention of q, k, v [B, H, T, D] -> [B, H, T, D], scaled by 1/sqrt(D).
/// Differentiable in q, k and v.
pub fn causal_attention(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
    reference::causal_attention(q, k, v)
}

/// Attention of new queries q [B, H, Tq, D] against cached keys/values k, v [B, H, Tk, D]
/// where the queries are the last Tq positions of the Tk (the KV-cache case when
/// sampling). Inference only.
pub fn cached_attention(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
    reference::cached_attention(q, k, v)
}
