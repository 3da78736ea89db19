//! Composed causal attention: materialises the [B, H, T, T] scores. Differentiable
//! through candle's own ops (the composed `softmax`, not `softmax_last_dim`, which has
//! no backward).

use candle_core::{Device, Result, Tensor, D};

/// Additive mask [Tq, Tk]: 0 where query i (at absolute position Tk-Tq+i) may see key j,
/// -inf elsewhere.
fn causal_mask(tq: usize, tk: usize, device: &Device) -> Result<Tensor> {
    let offset = tk - tq;
    let mask: Vec<f32> = (0..tq)
        .flat_map(|i| {
            (0..tk).map(move |j| {
                if j <= i + offset {
                    0.0
                } else {
                    f32::NEG_INFINITY
                }
            })
        })
        .collect();
    Tensor::from_vec(mask, (tq, tk), device)
}

/// See [`super::causal_attention`].
pub fn causal_attention(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
    cached_attention(q, k, v)
}

/// See [`super::cached_attention`]; with Tq = Tk this is ordinary causal attention.
pub fn cached_attention(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
    let (_b, _h, tq, d) = q.dims4()?;
    let tk = k.dim(2)?;
    let scale = 1.0 / (d as f64).sqrt();
    let scores = (q.matmul(&k.t()?)? * scale)?; // [B, H, Tq, D] x [B, H, D, Tk] -> [B, H, Tq, Tk]
    let mask = causal_mask(tq, tk, q.device())?.to_dtype(scores.dtype())?;
    let scores = scores.broadcast_add(&mask)?;
    let probs = candle_nn::ops::softmax(&scores, D::Minus1)?; // [B, H, Tq, Tk]
    probs.matmul(v) // [B, H, Tq, Tk] x [B, H, Tk, D] -> [B, H, Tq, D]
}
