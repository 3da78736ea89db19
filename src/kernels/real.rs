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
