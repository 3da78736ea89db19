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
use std::any::TypeId;

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
pub trait GradElem: Copy + Send + Sync + 'static + sealed::Sealed {}
impl GradElem for f32 {}
impl GradElem for bf16 {}
impl GradElem for f16 {}

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for half::bf16 {}
    impl Sealed for half::f16 {}
}

/// `s` as a slice of `U` when `U` is `T`.
fn same_type<T: 'static, U: 'static>(s: &mut [T]) -> Option<&mut [U]> {
    // SAFETY: T and U are the same type (TypeId), so the view is the slice itself.
    (TypeId::of::<T>() == TypeId::of::<U>())
        .then(|| unsafe { std::slice::from_raw_parts_mut(s.as_mut_ptr().cast::<U>(), s.len()) })
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
        let outs = match x {
            Logits::F32(x) => {
                same_type(grad).map(|g| kernel::run::<f32, f32>(x, t, &p, scale, Some(g)))
            }
            Logits::BF16(x) => {
                same_type(grad).map(|g| kernel::run::<bf16, f32>(x, t, &p, scale, Some(g)))
            }
            Logits::F16(x) => {
                same_type(grad).map(|g| kernel::run::<f16, f32>(x, t, &p, scale, Some(g)))
            }
            Logits::F64(_) => None,
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
