//! Layer kernels of the model other than attention and the loss: LayerNorm, GELU,
//! rotary positions, and the bf16 matrix product of `--dtype bf16` training.
//! Each entry point is differentiable; `reference` holds the composed versions.
//!
//! The fused versions (f32 and f64 on the CPU) are candle custom ops with explicit
//! backward passes, parallel over fixed chunks (results do not depend on the thread
//! count) and compiled for the SIMD level of `crate::cpu::simd`. Other dtypes and
//! devices fall back to `reference`.

pub(crate) mod gelu;
pub mod gemm_bf16;
pub(crate) mod layer_norm;
mod real;
pub(crate) use real::Stored;
pub mod reference;
pub mod rope;

use candle_core::{DType, Result, Tensor};

/// LayerNorm over the last dimension: (x - mean) / sqrt(var + eps) · gain + bias.
/// x [..., C], gain [C], bias [C] -> [..., C]. Backward gives dx, dgain, dbias.
pub fn layer_norm(x: &Tensor, gain: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    if !x.device().is_cpu() || gain.dtype() != x.dtype() || bias.dtype() != x.dtype() {
        return reference::layer_norm(x, gain, bias, eps);
    }
    // Strided inputs (e.g. a transposed view) are copied once here, with backward.
    let (x, gain, bias) = (x.contiguous()?, gain.contiguous()?, bias.contiguous()?);
    match x.dtype() {
        DType::F32 => x.apply_op3(&gain, &bias, layer_norm::LayerNormOp::<f32>::new(eps)),
        DType::F64 => x.apply_op3(&gain, &bias, layer_norm::LayerNormOp::<f64>::new(eps)),
        _ => reference::layer_norm(&x, &gain, &bias, eps),
    }
}

/// GELU, tanh approximation (GPT-2's). x [...] -> [...].
pub fn gelu(x: &Tensor) -> Result<Tensor> {
    if !x.device().is_cpu() {
        return reference::gelu(x);
    }
    let x = x.contiguous()?;
    match x.dtype() {
        DType::F32 => x.apply_op1(gelu::GeluOp::<f32>::new()),
        DType::F64 => x.apply_op1(gelu::GeluOp::<f64>::new()),
        _ => reference::gelu(&x),
    }
}
