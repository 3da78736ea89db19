//! Layer kernels of the model other than attention and the loss: LayerNorm and GELU.
//! Each entry point is differentiable; `reference` holds the composed versions.

pub mod reference;

use candle_core::{Result, Tensor};

/// LayerNorm over the last dimension: (x - mean) / sqrt(var + eps) · gain + bias.
/// x [..., C], gain [C], bias [C] -> [..., C].
pub fn layer_norm(x: &Tensor, gain: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    reference::layer_norm(x, gain, bias, eps)
}

/// GELU, tanh approximation (GPT-2's).
pub fn gelu(x: &Tensor) -> Result<Tensor> {
    reference::gelu(x)
}
