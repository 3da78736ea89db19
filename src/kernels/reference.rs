//! Composed, differentiable versions of the layer kernels. candle's own
//! `LayerNorm::forward` / `ops::layer_norm` have no backward, so they are not used.

use candle_core::{Result, Tensor, D};

/// See [`super::layer_norm`].
pub fn layer_norm(x: &Tensor, gain: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    let mean = x.mean_keepdim(D::Minus1)?; // [..., 1]
    let centered = x.broadcast_sub(&mean)?; // [..., C]
    let var = centered.sqr()?.mean_keepdim(D::Minus1)?; // [..., 1]
    let normed = centered.broadcast_div(&(var + eps)?.sqrt()?)?; // [..., C]
    normed.broadcast_mul(gain)?.broadcast_add(bias)
}

/// See [`super::gelu`]: candle's tanh-approximation GELU has a backward.
pub fn gelu(x: &Tensor) -> Result<Tensor> {
    x.gelu()
}
