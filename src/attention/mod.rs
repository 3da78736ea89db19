//! Causal multi-head self-attention: softmax(q·kᵀ·scale + causal mask)·v.
//!
//! Notation: B batch, H heads, T sequence length, D head width.
//! `causal_attention` and `cached_attention` are what the model calls; they run the
//! fused candle op ([`fused`]) over the slice kernel ([`kernel`], FlashAttention-2
//! style tiles with an explicit backward) for f32/f64 tensors on the CPU, and fall back
//! to the composed [`reference`] otherwise. `reference` is kept for tests and
//! benchmarks.

pub mod fused;
pub mod kernel;
pub mod reference;

use candle_core::{DType, Result, Tensor};

pub use fused::FusedOptions;

/// Whether the fused kernel handles these tensors (CPU, f32 or f64).
fn fused_supported(q: &Tensor) -> bool {
    q.device().is_cpu() && matches!(q.dtype(), DType::F32 | DType::F64)
}

/// Causal self-attention of q, k, v [B, H, T, D] -> [B, H, T, D], scaled by 1/sqrt(D).
/// Differentiable in q, k and v. Any layout (e.g. straight from a transpose).
pub fn causal_attention(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
    if fused_supported(q) {
        fused::attention(q, k, v, FusedOptions::default())
    } else {
        reference::causal_attention(q, k, v)
    }
}

/// Attention of new queries q [B, H, Tq, D] against cached keys/values k, v [B, H, Tk, D]
/// where the queries are the last Tq positions of the Tk (the KV-cache case when
/// sampling), Tq <= Tk. Meant for inference (Tq = 1 takes a dot-product path without
/// tiles), but differentiable all the same.
pub fn cached_attention(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
    if fused_supported(q) {
        fused::attention(q, k, v, FusedOptions::default())
    } else {
        reference::cached_attention(q, k, v)
    }
}
