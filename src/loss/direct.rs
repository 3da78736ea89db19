//! Loss and d(loss)/d(logits) from one pass of the row kernel, outside candle's autograd
//! (no graph, no zero-filled gradient accumulator): what a hand-written backward wants.

use super::kernel::{self, RowScale};
use super::rows::{
    count_rows, loss_storage, params, prepare, reduce, row_factor, run_logits, with_cpu_inputs,
    Logits,
};
use super::CrossEntropyOptions;
use candle_core::{bail, CpuStorage, Device, Result, Tensor};
use half::{bf16, f16};

/// Loss and d(loss)/d(logits) [N, V] from one pass, outside candle's autograd (no
/// graph, no zero-filled gradient accumulator): what a hand-written backward wants.
/// For `Reduction::None` the gradient is that of the sum of the row losses.
pub fn cross_entropy_loss_and_grad(
    logits: &Tensor,
    targets: &Tensor,
    o: &CrossEntropyOptions,
) -> Result<(Tensor, Tensor)> {
    let (logits, targets) = prepare(logits, targets)?;
    let (n, v) = logits.dims2()?;
    let p = params(o, v);
    with_cpu_inputs(&logits, &targets, |x, t| {
        let counted = count_rows(t, o.ignore_index);
        let scale = RowScale::Uniform(row_factor(o, counted));
        let (outs, g) = run_logits(&x, n, v, t, &p, scale, true)?;
        let is_f64 = matches!(x, Logits::F64(_));
        let loss = match loss_storage(reduce(o, &outs, counted), is_f64, o) {
            (CpuStorage::F64(v), shape) => Tensor::from_vec(v, shape, &Device::Cpu)?,
            (CpuStorage::F32(v), shape) => Tensor::from_vec(v, shape, &Device::Cpu)?,
            _ => unreachable!("loss_storage makes f32 or f64"),
        };
        Ok((loss, g.expect("asked for a gradient")))
    })
}

/// A gradient element type [`cross_entropy_loss_and_grad_into`] writes: f32, bf16 or
/// f16, the logits' dtype.
pub trait GradElem: Copy + Send + Sync + 'static + sealed::Sealed {
    /// The buffer, tagged with its dtype.
    #[doc(hidden)]
    fn grad_buf(g: &mut [Self]) -> GradBuf<'_>;
}

/// A gradient buffer of one of the [`GradElem`] types.
#[doc(hidden)]
pub enum GradBuf<'a> {
    F32(&'a mut [f32]),
    BF16(&'a mut [bf16]),
    F16(&'a mut [f16]),
}

impl GradElem for f32 {
    fn grad_buf(g: &mut [Self]) -> GradBuf<'_> {
        GradBuf::F32(g)
    }
}
impl GradElem for bf16 {
    fn grad_buf(g: &mut [Self]) -> GradBuf<'_> {
        GradBuf::BF16(g)
    }
}
impl GradElem for f16 {
    fn grad_buf(g: &mut [Self]) -> GradBuf<'_> {
        GradBuf::F16(g)
    }
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for half::bf16 {}
    impl Sealed for half::f16 {}
}

/// [`cross_entropy_loss_and_grad`] into a gradient buffer the caller owns and reuses:
/// `grad` [N·V], of the logits' dtype (f32, bf16 or f16), receives d(loss)/d(logits).
/// Returns the loss values (one, or N for `None`). A buffer written before costs no
/// page faults, a large share of writing a fresh [N, V] gradient (BENCHMARKS.md).
pub fn cross_entropy_loss_and_grad_into<G: GradElem>(
    logits: &Tensor,
    targets: &Tensor,
    o: &CrossEntropyOptions,
    grad: &mut [G],
) -> Result<Vec<f64>> {
    let (logits, targets) = prepare(logits, targets)?;
    let (n, v) = logits.dims2()?;
    if grad.len() != n * v {
        bail!(
            "cross_entropy: gradient buffer of {} for [{n}, {v}]",
            grad.len()
        )
    }
    let p = params(o, v);
    let dt = logits.dtype();
    with_cpu_inputs(&logits, &targets, |x, t| {
        let counted = count_rows(t, o.ignore_index);
        let scale = RowScale::Uniform(row_factor(o, counted));
        let outs = match (x, G::grad_buf(&mut *grad)) {
            (Logits::F32(x), GradBuf::F32(g)) => {
                Some(kernel::run::<f32, f32>(x, t, &p, scale, Some(g)))
            }
            (Logits::BF16(x), GradBuf::BF16(g)) => {
                Some(kernel::run::<bf16, f32>(x, t, &p, scale, Some(g)))
            }
            (Logits::F16(x), GradBuf::F16(g)) => {
                Some(kernel::run::<f16, f32>(x, t, &p, scale, Some(g)))
            }
            _ => None,
        };
        let Some(outs) = outs else {
            bail!(
                "cross_entropy_loss_and_grad_into: {dt:?} logits need a gradient buffer of their dtype (f32, bf16 or f16), not {}",
                std::any::type_name::<G>()
            )
        };
        Ok(reduce(o, &outs?, counted))
    })
}
