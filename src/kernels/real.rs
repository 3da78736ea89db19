//! The float type the layer kernels are generic over.

use crate::fastmath::exp_f32;
use candle_core::WithDType;

/// f32 (the model) or f64 (the gradient checks).
pub(crate) trait Real: WithDType {
    fn sqrt(self) -> Self;
    /// `exp` that LLVM can vectorise for f32 (no libm call); libm's for f64, so that
    /// the f64 gradient checks test the formulas, not the polynomial.
    fn exp_fast(self) -> Self;
}

impl Real for f32 {
    #[inline(always)]
    fn sqrt(self) -> Self {
        f32::sqrt(self)
    }
    #[inline(always)]
    fn exp_fast(self) -> Self {
        exp_f32(self)
    }
}

impl Real for f64 {
    #[inline(always)]
    fn sqrt(self) -> Self {
        f64::sqrt(self)
    }
    #[inline(always)]
    fn exp_fast(self) -> Self {
        f64::exp(self)
    }
}

/// What a layer kernel stores its output as: its own float type, or (from f32) bf16
/// rounded as `--dtype bf16`'s products round their factors (`gemm_bf16::to_bf16`), for
/// an activation that only feeds those products.
pub(crate) trait Stored<T>: Copy + Send + Sync {
    fn from_real(x: T) -> Self;
}

impl<T: Real> Stored<T> for T {
    #[inline(always)]
    fn from_real(x: T) -> T {
        x
    }
}

impl Stored<f32> for half::bf16 {
    #[inline(always)]
    fn from_real(x: f32) -> Self {
        half::bf16::from_bits(crate::cpu::bf16_bits_rne_ftz(x))
    }
}

#[cfg(test)]
mod tests {
    use super::super::{gelu, layer_norm};
    use crate::kernels::gemm_bf16::to_bf16;
    use half::bf16;

    fn bits(x: &[f32]) -> Vec<u16> {
        x.iter().map(|&x| to_bf16(x)).collect()
    }

    /// LayerNorm and GELU with a bf16 output give the bits of their f32 output as the
    /// bf16 product would round it (so the product sees the same factor either way),
    /// over rows of odd width, values down to GELU's subnormal tail.
    #[test]
    fn bf16_outputs_are_the_f32_outputs_rounded_as_the_product_rounds_them() {
        let (rows, c) = (37, 203);
        let x: Vec<f32> = (0..rows * c)
            .map(|i| {
                let u = ((i as u64).wrapping_mul(2654435761) % 100_003) as f32 / 100_003.0;
                (u - 0.5) * if i % 7 == 0 { 200.0 } else { 6.0 }
            })
            .collect();
        let gain: Vec<f32> = (0..c).map(|i| 0.5 + (i % 5) as f32 * 0.3).collect();
        let bias: Vec<f32> = (0..c).map(|i| (i % 3) as f32 * 0.1 - 0.1).collect();
        let (y, mean, rstd) = layer_norm::forward(&x, &gain, &bias, 1e-5);
        let (y16, mean16, rstd16) = layer_norm::forward_as::<f32, bf16>(&x, &gain, &bias, 1e-5);
        assert_eq!(
            y16.iter().map(|h| h.to_bits()).collect::<Vec<_>>(),
            bits(&y)
        );
        assert_eq!((mean16, rstd16), (mean, rstd));
        // GELU(x) is about x/2 near 0: tiny inputs give subnormal outputs.
        let tiny = (0..64).map(|i| (i as f32 - 32.0) * 1e-39);
        let x: Vec<f32> = x.iter().copied().chain(tiny).collect();
        let g = gelu::forward(&x);
        let g16 = gelu::forward_as::<f32, bf16>(&x);
        assert!(
            g.iter().any(|v| v.is_subnormal()),
            "no subnormal GELU output tested"
        );
        assert_eq!(
            g16.iter().map(|h| h.to_bits()).collect::<Vec<_>>(),
            bits(&g)
        );
    }
}
