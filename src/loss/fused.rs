//! The fused cross-entropy as a candle `CustomOp2` (logits, targets) with an explicit
//! backward.
//!
//! Forward: one pass of [`kernel::run`] over the rows gives the loss and, when the
//! logits need a gradient and the reduction is mean or sum, the gradient too; it is
//! stashed in the op (which lives in the graph) and `bwd` hands it back, scaled only if
//! the upstream gradient is not 1. With `Reduction::None` the upstream gradient is one
//! factor per row, so `bwd` runs the kernel again with those factors instead (eval, the
//! usual user of `None`, needs no gradient at all).

use super::kernel::{self, Elem, Params, Real, RowOut, RowScale};
use super::{CrossEntropyOptions, Reduction};
use crate::cpu::{assume_init, uninit_vec};
use candle_core::{
    backend::BackendStorage, bail, CpuStorage, CustomOp2, DType, Device, Layout, Result, Shape,
    Storage, Tensor,
};
use half::{bf16, f16};
use std::sync::{Arc, Mutex};

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

pub(crate) fn mean_denominator(o: &CrossEntropyOptions, counted: usize) -> f64 {
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

pub(crate) fn kernel_err(e: kernel::KernelError) -> candle_core::Error {
    candle_core::Error::Msg(e.to_string())
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

/// Calls `f` with the CPU slices of contiguous logits and targets (the storage guards
/// live for the call).
fn with_cpu_inputs<R>(
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

fn targets_slice<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [u32]> {
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
    if want_grad && T::IS_REAL && p.softcap.is_none() {
        // Uninitialised: the kernel streams every element of the gradient, so zero-filling
        // it first (calloc on reused heap memory) would be a whole extra write pass.
        let mut g = uninit_vec::<T>(n * v);
        let dst = T::as_real_uninit(&mut g).expect("T is the arithmetic type");
        let outs = kernel::run_fresh::<T, F>(x, targets, p, scale, dst).map_err(kernel_err)?;
        // SAFETY: run_fresh returned Ok, so it wrote all n·v elements.
        let g = Tensor::from_vec(unsafe { assume_init(g) }, (n, v), &Device::Cpu)?;
        Ok((outs, Some(g)))
    } else if want_grad {
        // bf16/f16 or soft-capped rows read their gradient row back while writing it:
        // zero-filled (fresh pages from the allocator cost nothing to zero).
        let mut g = vec![T::zero(); n * v];
        let outs = kernel::run::<T, F>(x, targets, p, scale, Some(&mut g)).map_err(kernel_err)?;
        let g = Tensor::from_vec(g, (n, v), &Device::Cpu)?;
        Ok((outs, Some(g)))
    } else {
        let outs = kernel::run::<T, F>(x, targets, p, scale, None).map_err(kernel_err)?;
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

/// The fused cross-entropy op. See the module doc.
pub(crate) struct CeOp {
    opts: CrossEntropyOptions,
    /// Compute the gradient during the forward (the logits track a gradient and the
    /// reduction is mean or sum).
    eager_grad: bool,
    /// The gradient for an upstream gradient of 1, from the forward.
    stash: Mutex<Option<Tensor>>,
    stats: Mutex<Option<CrossEntropyStats>>,
}

impl CeOp {
    fn new(opts: &CrossEntropyOptions, eager_grad: bool) -> Self {
        Self {
            opts: opts.clone(),
            eager_grad,
            stash: Mutex::new(None),
            stats: Mutex::new(None),
        }
    }

    /// Runs the kernel on tensors (for `bwd`): gradient only.
    fn grad_from_tensors(
        &self,
        logits: &Tensor,
        targets: &Tensor,
        scale: RowScale<'_>,
    ) -> Result<Tensor> {
        let (n, v) = logits.dims2()?;
        let p = params(&self.opts, v);
        with_cpu_inputs(logits, targets, |x, t| {
            let (_, g) = run_logits(&x, n, v, t, &p, scale, true)?;
            Ok(g.expect("asked for a gradient"))
        })
    }
}

impl CustomOp2 for CeOp {
    fn name(&self) -> &'static str {
        "fused-cross-entropy"
    }

    /// logits [N, V] (f32/f64/bf16/f16, contiguous), targets [N] u32 →
    /// loss: scalar (mean, sum) or [N] (none); f64 for f64 logits, else f32.
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, v) = l1.shape().dims2()?;
        let t = targets_slice(s2, l2)?;
        if t.len() != n {
            bail!("cross_entropy: {} targets for {n} rows", t.len())
        }
        let x = logits_slice(s1, l1)?;
        let counted = count_rows(t, self.opts.ignore_index);
        let p = params(&self.opts, v);
        let eager = self.eager_grad && self.opts.reduction != Reduction::None;
        let scale = RowScale::Uniform(row_factor(&self.opts, counted));
        let (outs, g) = run_logits(&x, n, v, t, &p, scale, eager)?;
        *self.stash.lock().unwrap() = g;
        *self.stats.lock().unwrap() = Some(stats(&outs));
        let vals = reduce(&self.opts, &outs, counted);
        Ok(loss_storage(vals, matches!(x, Logits::F64(_)), &self.opts))
    }

    /// d(logits) [N, V] in the logits' dtype; targets get none.
    fn bwd(
        &self,
        logits: &Tensor,
        targets: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = match self.opts.reduction {
            Reduction::None => {
                // One upstream factor per row: fold them into the single write.
                let f: Vec<f64> = grad_res.to_dtype(DType::F64)?.to_vec1()?;
                self.grad_from_tensors(logits, targets, RowScale::PerRow(&f))?
            }
            Reduction::Mean | Reduction::Sum => {
                let up = grad_res.to_dtype(DType::F64)?.to_scalar::<f64>()?;
                // Taken, not cloned: the graph should not keep a second copy alive.
                let stashed = self.stash.lock().unwrap().take();
                match stashed {
                    Some(g) if up == 1.0 => g,
                    Some(g) => g.affine(up, 0.0)?,
                    None => {
                        // A second backward over the same graph: recompute.
                        let t: Vec<u32> = targets.to_vec1()?;
                        let counted = count_rows(&t, self.opts.ignore_index);
                        let s = row_factor(&self.opts, counted) * up;
                        self.grad_from_tensors(logits, targets, RowScale::Uniform(s))?
                    }
                }
            }
        };
        Ok((Some(g), None))
    }
}

fn prepare(logits: &Tensor, targets: &Tensor) -> Result<(Tensor, Tensor)> {
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

/// Fused [`super::cross_entropy`] (CPU), plus the per-row lse and argmax accuracy of the
/// same pass.
pub fn cross_entropy_with_stats(
    logits: &Tensor,
    targets: &Tensor,
    o: &CrossEntropyOptions,
) -> Result<(Tensor, CrossEntropyStats)> {
    let (logits, targets) = prepare(logits, targets)?;
    let track = logits.track_op();
    let op = Arc::new(CeOp::new(o, track));
    let loss = if track {
        let dynop: Arc<Box<dyn CustomOp2 + Send + Sync>> = Arc::new(Box::new(ArcOp(op.clone())));
        logits.apply_op2_arc(&targets, dynop)?
    } else {
        logits.apply_op2_no_bwd(&targets, op.as_ref())?
    };
    let st = op.stats.lock().unwrap().take().expect("forward ran");
    Ok((loss, st))
}

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
/// (one, or N for `None`). A buffer written before costs no page faults, which on this
/// machine are a large share of writing a fresh [N, V] gradient (see BENCHMARKS.md).
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
        let outs = kernel::run::<f32, f32>(x, t, &p, scale, Some(grad)).map_err(kernel_err)?;
        Ok(reduce(o, &outs, counted))
    })
}

/// Lets the graph hold the op by `Arc` while the caller keeps a handle for the stats.
struct ArcOp(Arc<CeOp>);

impl CustomOp2 for ArcOp {
    fn name(&self) -> &'static str {
        self.0.name()
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.0.cpu_fwd(s1, l1, s2, l2)
    }
    fn bwd(
        &self,
        a1: &Tensor,
        a2: &Tensor,
        res: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        self.0.bwd(a1, a2, res, g)
    }
}
