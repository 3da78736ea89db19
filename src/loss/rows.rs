//! The bookkeeping every user of the row kernel shares (the candle ops in `fused` and
//! `linear`, the tensor-level `direct`, the slice-level `head`): options to the kernel's
//! per-row parameters, per-row results to the reduced loss, kernel errors to candle
//! errors, tensors to the kernel's slices, and one kernel run over logits of any
//! supported dtype.

use super::kernel::{self, Elem, KernelError, Params, Real, RowOut, RowScale};
use super::{CrossEntropyOptions, Reduction};
use crate::cpu::{assume_init, uninit_vec};
use candle_core::{
    backend::BackendStorage, bail, CpuStorage, DType, Device, Layout, Result, Shape, Storage,
    Tensor,
};
use half::{bf16, f16};

/// By-products of one fused pass: per-row log-sum-exp and the argmax accuracy.
#[derive(Debug, Clone, PartialEq)]
pub struct CrossEntropyStats {
    /// log Σ_j exp(y_ij) per row (after the soft-cap); 0 for ignored rows. [N]
    pub lse: Vec<f32>,
    /// Counted rows whose argmax (first on ties) is the target.
    pub correct: usize,
    /// Rows not ignored.
    pub counted: usize,
}

/// The kernel's per-row parameters for options `o` over V = `v` classes.
pub(crate) fn params(o: &CrossEntropyOptions, v: usize) -> Params {
    Params {
        v,
        ignore_index: o.ignore_index,
        label_smoothing: o.label_smoothing as f64,
        z_loss: o.z_loss as f64,
        softcap: o.softcap.map(|c| c as f64),
    }
}

/// Rows not ignored.
pub(crate) fn count_rows(targets: &[u32], ignore: Option<u32>) -> usize {
    match ignore {
        Some(ix) => targets.iter().filter(|&&t| t != ix).count(),
        None => targets.len(),
    }
}

/// The factor d(loss)/d(row loss) of a reduced loss: 1/denominator for the mean (the
/// normaliser, else the counted rows, never below 1 so that zero counted rows give
/// 0 and not 0/0), 1 for the sum and for per-row losses.
pub(crate) fn row_factor(o: &CrossEntropyOptions, counted: usize) -> f64 {
    match o.reduction {
        Reduction::Mean => 1.0 / mean_denominator(o, counted),
        Reduction::Sum | Reduction::None => 1.0,
    }
}

fn mean_denominator(o: &CrossEntropyOptions, counted: usize) -> f64 {
    (o.normalizer.map(|d| d as f64).unwrap_or(counted as f64)).max(1.0)
}

/// Reduces the per-row losses in row order (f64), so the result does not depend on how
/// rows were spread over threads. Returns the loss values: one, or N for `None`.
pub(crate) fn reduce(o: &CrossEntropyOptions, outs: &[RowOut], counted: usize) -> Vec<f64> {
    match o.reduction {
        Reduction::None => outs.iter().map(|r| r.loss).collect(),
        Reduction::Sum => vec![outs.iter().map(|r| r.loss).sum()],
        Reduction::Mean => {
            vec![outs.iter().map(|r| r.loss).sum::<f64>() / mean_denominator(o, counted)]
        }
    }
}

pub(crate) fn stats(outs: &[RowOut]) -> CrossEntropyStats {
    CrossEntropyStats {
        lse: outs.iter().map(|r| r.lse as f32).collect(),
        correct: outs.iter().filter(|r| r.correct).count(),
        counted: outs.iter().filter(|r| r.counted).count(),
    }
}

/// A kernel error as the one-line candle error the callers report.
impl From<KernelError> for candle_core::Error {
    fn from(e: KernelError) -> Self {
        candle_core::Error::Msg(e.to_string())
    }
}

/// The logits as a contiguous slice of one of the supported dtypes.
pub(crate) enum Logits<'a> {
    F32(&'a [f32]),
    F64(&'a [f64]),
    BF16(&'a [bf16]),
    F16(&'a [f16]),
}

pub(crate) fn logits_slice<'a>(s: &'a CpuStorage, l: &Layout) -> Result<Logits<'a>> {
    let Some((a, b)) = l.contiguous_offsets() else {
        bail!("cross_entropy: logits must be contiguous")
    };
    Ok(match s {
        CpuStorage::F32(x) => Logits::F32(&x[a..b]),
        CpuStorage::F64(x) => Logits::F64(&x[a..b]),
        CpuStorage::BF16(x) => Logits::BF16(&x[a..b]),
        CpuStorage::F16(x) => Logits::F16(&x[a..b]),
        other => bail!(
            "cross_entropy: logits of dtype {:?} are not supported",
            other.dtype()
        ),
    })
}

/// The targets as a contiguous u32 slice.
pub(crate) fn targets_slice<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [u32]> {
    let Some((a, b)) = l.contiguous_offsets() else {
        bail!("cross_entropy: targets must be contiguous")
    };
    match s {
        CpuStorage::U32(t) => Ok(&t[a..b]),
        other => bail!(
            "cross_entropy: targets must be u32, got {:?}",
            other.dtype()
        ),
    }
}

/// One kernel run over typed logits: row results and, if asked, the gradient [N, V]
/// as a tensor of the logits' dtype.
fn run_typed<T: Elem<F> + candle_core::WithDType, F: Real>(
    x: &[T],
    n: usize,
    v: usize,
    targets: &[u32],
    p: &Params,
    scale: RowScale<'_>,
    want_grad: bool,
) -> Result<(Vec<RowOut>, Option<Tensor>)> {
    if want_grad && p.softcap.is_none() {
        // Uninitialised: the kernel streams every element of the gradient, so zero-filling
        // it first (calloc on reused heap memory) would be a whole extra write pass.
        let mut g = uninit_vec::<T>(n * v);
        let outs = kernel::run_fresh::<T, F>(x, targets, p, scale, &mut g)?;
        // SAFETY: run_fresh returned Ok, so it wrote all n·v elements.
        let g = Tensor::from_vec(unsafe { assume_init(g) }, (n, v), &Device::Cpu)?;
        Ok((outs, Some(g)))
    } else if want_grad {
        // Soft-capped rows read their gradient row back while writing it: zero-filled
        // (fresh pages from the allocator cost nothing to zero).
        let mut g = vec![T::zero(); n * v];
        let outs = kernel::run::<T, F>(x, targets, p, scale, Some(&mut g))?;
        let g = Tensor::from_vec(g, (n, v), &Device::Cpu)?;
        Ok((outs, Some(g)))
    } else {
        let outs = kernel::run::<T, F>(x, targets, p, scale, None)?;
        Ok((outs, None))
    }
}

pub(crate) fn run_logits(
    x: &Logits<'_>,
    n: usize,
    v: usize,
    targets: &[u32],
    p: &Params,
    scale: RowScale<'_>,
    want_grad: bool,
) -> Result<(Vec<RowOut>, Option<Tensor>)> {
    match *x {
        Logits::F32(x) => run_typed::<f32, f32>(x, n, v, targets, p, scale, want_grad),
        Logits::F64(x) => run_typed::<f64, f64>(x, n, v, targets, p, scale, want_grad),
        Logits::BF16(x) => run_typed::<bf16, f32>(x, n, v, targets, p, scale, want_grad),
        Logits::F16(x) => run_typed::<f16, f32>(x, n, v, targets, p, scale, want_grad),
    }
}

/// The loss tensor: f64 for f64 logits, else f32; a scalar, or [N] for `None`.
pub(crate) fn loss_storage(
    vals: Vec<f64>,
    f64_out: bool,
    o: &CrossEntropyOptions,
) -> (CpuStorage, Shape) {
    let shape = match o.reduction {
        Reduction::None => Shape::from(vals.len()),
        _ => Shape::from(()),
    };
    let st = if f64_out {
        CpuStorage::F64(vals)
    } else {
        CpuStorage::F32(vals.into_iter().map(|x| x as f32).collect())
    };
    (st, shape)
}

/// Logits [N, V] (V ≥ 1) and targets [N] as the kernel takes them: both contiguous,
/// targets as u32.
pub(crate) fn prepare(logits: &Tensor, targets: &Tensor) -> Result<(Tensor, Tensor)> {
    let (n, v) = logits.dims2()?;
    if v == 0 {
        bail!("cross_entropy: logits of shape [{n}, 0]: there must be at least one class")
    }
    let t = targets.to_dtype(DType::U32)?.contiguous()?;
    if t.dims() != [n] {
        bail!(
            "cross_entropy: targets of shape {:?} for {n} rows",
            t.dims()
        )
    }
    Ok((logits.contiguous()?, t))
}

/// Calls `f` with the CPU slices of contiguous logits and targets (the storage guards
/// live for the call).
pub(crate) fn with_cpu_inputs<R>(
    logits: &Tensor,
    targets: &Tensor,
    f: impl FnOnce(Logits<'_>, &[u32]) -> Result<R>,
) -> Result<R> {
    let (ls, ll) = logits.storage_and_layout();
    let (ts, tl) = targets.storage_and_layout();
    let (Storage::Cpu(ls), Storage::Cpu(ts)) = (&*ls, &*ts) else {
        bail!("cross_entropy: the fused kernel runs on the CPU only")
    };
    f(logits_slice(ls, ll)?, targets_slice(ts, tl)?)
}
