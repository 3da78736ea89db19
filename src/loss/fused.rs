//! The fused cross-entropy as a candle `CustomOp2` (logits, targets) with an explicit
//! backward.
//!
//! Forward: one pass of [`kernel::run`] over the rows gives the loss and, when the
//! logits need a gradient and the reduction is mean or sum, the gradient too; it is
//! stashed in the op (which lives in the graph) and `bwd` hands it back, scaled only if
//! the upstream gradient is not 1. With `Reduction::None` the upstream gradient is one
//! factor per row, so `bwd` runs the kernel again with those factors instead (eval, the
//! usual user of `None`, needs no gradient at all).

use super::kernel::RowScale;
use super::rows::{
    count_rows, logits_slice, loss_storage, params, prepare, reduce, row_factor, run_logits, stats,
    targets_slice, with_cpu_inputs, CrossEntropyStats, Logits,
};
use super::{CrossEntropyOptions, Reduction};
use candle_core::{bail, CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor};
use std::sync::{Arc, Mutex};

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
