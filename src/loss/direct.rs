//! Loss and d(loss)/d(logits) from one pass of the row kernel, outside candle's autograd
//! (no graph, no zero-filled gradient accumulator): what a hand-written backward wants.

use super::kernel::{self, RowScale};
use super::rows::{
    count_rows, loss_storage, params, prepare, reduce, row_factor, run_logits, with_cpu_inputs,
    Logits,
};
use super::CrossEntropyOptions;
use candle_core::{bail, CpuStorage, Device, Result, Tensor};

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

/// [`cross_entropy_loss_and_grad`] for f32 logits into a gradient buffer the caller
/// owns and reuses: `grad` [N·V] receives d(loss)/d(logits). Returns the loss values
/// (one, or N for `None`). A buffer written before costs no page faults, a large share
/// of writing a fresh [N, V] gradient (BENCHMARKS.md).
pub fn cross_entropy_loss_and_grad_into(
    logits: &Tensor,
    targets: &Tensor,
    o: &CrossEntropyOptions,
    grad: &mut [f32],
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
    with_cpu_inputs(&logits, &targets, |x, t| {
        let Logits::F32(x) = x else {
            bail!("cross_entropy_loss_and_grad_into: f32 logits only")
        };
        let counted = count_rows(t, o.ignore_index);
        let scale = RowScale::Uniform(row_factor(o, counted));
        let outs = kernel::run::<f32, f32>(x, t, &p, scale, Some(grad))?;
        Ok(reduce(o, &outs, counted))
    })
}
