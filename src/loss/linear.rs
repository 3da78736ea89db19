//! The output projection fused with the cross-entropy, in row chunks, so that the
//! N x V logits are never held whole.
//!
//! For each chunk of c rows (c·V ≈ `CHUNK_ELEMS`):
//!   logits_c = h_c · Wᵀ                [c, D] x [D, V] -> [c, V]   (candle matmul)
//!   the CE kernel turns logits_c into d(loss)/d(logits_c) in place  (kernel::run_in_place)
//!   dH_c  = dlogits_c · W              [c, V] x [V, D] -> [c, D]
//!   dW   += dlogits_cᵀ · h_c           [V, c] x [c, D] -> [V, D]   (accumulated in f32)
//! all during the forward when a gradient is needed (mean / sum); dH and dW are stashed
//! in a `CustomOp3` (hidden, weight, targets) whose `bwd` hands them back. Peak extra
//! memory is one [c, V] chunk, one [V, D] partial product and the [V, D] + [N, D]
//! gradients, instead of PyTorch's N x V logits, their gradient and softmax.
//!
//! With `Reduction::None` the upstream gradient weighs each row, which dW cannot take
//! after the fact, so `bwd` runs the chunks again with those weights.
//!
//! bf16 / f16 hidden states and weight: the arithmetic is f32 (the weight widened once,
//! each chunk of hidden rows as it is used), the logits never leave f32, and the
//! gradients stay f32 until `bwd` has applied the upstream factor, then are rounded to
//! the inputs' type once. The loss is f32, as the fused CE's for 16-bit logits.

use super::kernel::{self, RowOut, RowScale};
use super::rows::{count_rows, logits_slice, loss_storage, params, reduce, row_factor, Logits};
use super::{CrossEntropyOptions, Reduction};
use candle_core::{
    bail, CpuStorage, CustomOp3, DType, Device, Layout, Result, Shape, Storage, Tensor,
};
use rayon::prelude::*;
use std::sync::{Arc, Mutex};

/// Logits elements per chunk: 2^24 f32 = 64 MiB (333 rows at V = 50304).
pub const CHUNK_ELEMS: usize = 1 << 24;

/// Rows per chunk for V columns: a multiple of 8 (at least 8), at most `n`.
pub fn chunk_rows(n: usize, v: usize) -> usize {
    let c = (CHUNK_ELEMS / v.max(1)).max(8) / 8 * 8;
    c.min(n.max(1))
}

/// What the chunk loop returns.
struct Chunked {
    outs: Vec<RowOut>,
    dh: Option<Tensor>,
    dw: Option<Tensor>,
}

/// The chunk loop. `h` [N, D] and `w` [V, D] are detached, contiguous, of one type:
/// f32, f64, or bf16/f16 (computed in f32, see the module docs). The gradients are f64
/// for f64 inputs, else f32.
#[allow(clippy::too_many_arguments)]
fn chunked(
    h: &Tensor,
    w: &Tensor,
    targets: &[u32],
    o: &CrossEntropyOptions,
    scale: RowScale<'_>,
    want_dh: bool,
    want_dw: bool,
    c: usize,
) -> Result<Chunked> {
    let (n, d) = h.dims2()?;
    let (v, _) = w.dims2()?;
    let p = params(o, v);
    let half = is_half(h.dtype());
    let w = &if half {
        w.to_dtype(DType::F32)?
    } else {
        w.clone()
    }; // [V, D] in the math type
    let wt = w.t()?; // [D, V], a strided view
    let mut outs = Vec::with_capacity(n);
    let mut dh_parts = Vec::new();
    let f64_math = h.dtype() == DType::F64;
    // dW accumulates in f32 (f64 for f64 inputs).
    let mut dw: Option<Acc> = match (want_dw, f64_math) {
        (false, _) => None,
        (true, false) => Some(Acc::F32(vec![0f32; v * d])),
        (true, true) => Some(Acc::F64(vec![0f64; v * d])),
    };
    let want_grad = want_dh || want_dw;
    let mut s = 0;
    while s < n {
        let rows = c.min(n - s);
        let hc = h.narrow(0, s, rows)?; // [c, D], contiguous
        let hc = if half { hc.to_dtype(DType::F32)? } else { hc };
        let logits = hc.matmul(&wt)?; // [c, V]
        let tc = &targets[s..s + rows];
        let sc = match scale {
            RowScale::Uniform(f) => RowScale::Uniform(f),
            RowScale::PerRow(f) => RowScale::PerRow(&f[s..s + rows]),
        };
        if want_grad {
            let op = InPlaceCe {
                targets: tc,
                p,
                scale: sc,
                outs: Mutex::new(None),
            };
            logits.inplace_op1(&op)?;
            outs.extend(op.outs.into_inner().unwrap().expect("kernel ran"));
            let g = logits; // now d(loss)/d(logits_c)
            if want_dh {
                dh_parts.push(g.matmul(w)?); // [c, V] x [V, D]
            }
            if let Some(acc) = dw.as_mut() {
                let part = g.t()?.matmul(&hc)?; // [V, c] x [c, D]
                add_into(acc, &part)?;
            }
        } else {
            let (st, l) = logits.storage_and_layout();
            let Storage::Cpu(st) = &*st else {
                bail!("linear_cross_entropy: CPU only")
            };
            let r = match logits_slice(st, l)? {
                Logits::F32(x) => kernel::run::<f32, f32>(x, tc, &p, sc, None),
                Logits::F64(x) => kernel::run::<f64, f64>(x, tc, &p, sc, None),
                _ => bail!("linear_cross_entropy: f32 or f64 only"),
            };
            outs.extend(r?);
        }
        s += rows;
    }
    let dh = if want_dh {
        Some(if dh_parts.is_empty() {
            let math = if f64_math { DType::F64 } else { DType::F32 };
            Tensor::zeros((0, d), math, &Device::Cpu)? // no rows (N = 0)
        } else {
            Tensor::cat(&dh_parts, 0)?
        })
    } else {
        None
    };
    let dw = match dw {
        Some(Acc::F32(acc)) => Some(Tensor::from_vec(acc, (v, d), &Device::Cpu)?),
        Some(Acc::F64(acc)) => Some(Tensor::from_vec(acc, (v, d), &Device::Cpu)?),
        None => None,
    };
    Ok(Chunked { outs, dh, dw })
}

/// bf16 or f16: inputs the chunk loop computes in f32.
fn is_half(t: DType) -> bool {
    matches!(t, DType::BF16 | DType::F16)
}

/// A gradient from the chunk loop in its input's type (one rounding for 16-bit inputs).
fn as_input(g: Option<Tensor>, input: &Tensor) -> Result<Option<Tensor>> {
    g.map(|g| g.to_dtype(input.dtype())).transpose()
}

/// The dW accumulator [V, D].
enum Acc {
    F32(Vec<f32>),
    F64(Vec<f64>),
}

/// acc += part, elementwise (order-free, so deterministic), on the rayon threads.
fn add_into(acc: &mut Acc, part: &Tensor) -> Result<()> {
    fn add<T: Copy + Send + Sync + std::ops::AddAssign>(acc: &mut [T], x: &[T]) {
        acc.par_chunks_mut(1 << 16)
            .zip(x.par_chunks(1 << 16))
            .for_each(|(d, s)| {
                for (d, s) in d.iter_mut().zip(s) {
                    *d += *s;
                }
            });
    }
    let part = part.contiguous()?;
    let (st, l) = part.storage_and_layout();
    let Some((a, b)) = l.contiguous_offsets() else {
        bail!("linear_cross_entropy: dW partial not contiguous")
    };
    match (acc, &*st) {
        (Acc::F32(acc), Storage::Cpu(CpuStorage::F32(x))) => add(acc, &x[a..b]),
        (Acc::F64(acc), Storage::Cpu(CpuStorage::F64(x))) => add(acc, &x[a..b]),
        _ => bail!("linear_cross_entropy: unexpected dW partial storage"),
    }
    Ok(())
}

/// The CE kernel over a logits chunk, in place.
struct InPlaceCe<'a> {
    targets: &'a [u32],
    p: kernel::Params,
    scale: RowScale<'a>,
    outs: Mutex<Option<Vec<RowOut>>>,
}

impl candle_core::InplaceOp1 for InPlaceCe<'_> {
    fn name(&self) -> &'static str {
        "fused-cross-entropy-in-place"
    }
    fn cpu_fwd(&self, s: &mut CpuStorage, l: &Layout) -> Result<()> {
        let Some((a, b)) = l.contiguous_offsets() else {
            bail!("in-place CE: logits not contiguous")
        };
        let outs = match s {
            CpuStorage::F32(x) => {
                kernel::run_in_place::<f32>(&mut x[a..b], self.targets, &self.p, self.scale)
            }
            CpuStorage::F64(x) => {
                kernel::run_in_place::<f64>(&mut x[a..b], self.targets, &self.p, self.scale)
            }
            _ => bail!("in-place CE: f32 or f64 only"),
        }?;
        *self.outs.lock().unwrap() = Some(outs);
        Ok(())
    }
}

/// Holds the loss computed by [`linear_cross_entropy`] and the gradients of its inputs.
struct LinearCeOp {
    opts: CrossEntropyOptions,
    targets: Vec<u32>,
    chunk: usize,
    loss: CpuStorage,
    loss_shape: Shape,
    dh: Mutex<Option<Tensor>>,
    dw: Mutex<Option<Tensor>>,
}

impl CustomOp3 for LinearCeOp {
    fn name(&self) -> &'static str {
        "fused-linear-cross-entropy"
    }

    /// hidden [N, D], weight [V, D], targets [N] → the loss computed by the chunk loop.
    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        Ok((self.loss.clone(), self.loss_shape.clone()))
    }

    /// → (d(hidden) [N, D], d(weight) [V, D], none for the targets).
    fn bwd(
        &self,
        hidden: &Tensor,
        weight: &Tensor,
        _targets: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let want_dh = hidden.track_op();
        let want_dw = weight.track_op();
        if self.opts.reduction == Reduction::None {
            let f: Vec<f64> = grad_res.to_dtype(DType::F64)?.to_vec1()?;
            let h = hidden.detach().contiguous()?;
            let w = weight.detach().contiguous()?;
            let r = chunked(
                &h,
                &w,
                &self.targets,
                &self.opts,
                RowScale::PerRow(&f),
                want_dh,
                want_dw,
                self.chunk,
            )?;
            return Ok((as_input(r.dh, hidden)?, as_input(r.dw, weight)?, None));
        }
        let up = grad_res.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        let (dh, dw) = (
            self.dh.lock().unwrap().take(),
            self.dw.lock().unwrap().take(),
        );
        if (want_dh && dh.is_none()) || (want_dw && dw.is_none()) {
            // A second backward over the same graph: recompute.
            let h = hidden.detach().contiguous()?;
            let w = weight.detach().contiguous()?;
            let s = row_factor(
                &self.opts,
                count_rows(&self.targets, self.opts.ignore_index),
            ) * up;
            let r = chunked(
                &h,
                &w,
                &self.targets,
                &self.opts,
                RowScale::Uniform(s),
                want_dh,
                want_dw,
                self.chunk,
            )?;
            return Ok((as_input(r.dh, hidden)?, as_input(r.dw, weight)?, None));
        }
        let scale = |g: Option<Tensor>| -> Result<Option<Tensor>> {
            match g {
                Some(g) if up != 1.0 => Ok(Some(g.affine(up, 0.0)?)),
                g => Ok(g),
            }
        };
        Ok((
            as_input(scale(dh)?, hidden)?,
            as_input(scale(dw)?, weight)?,
            None,
        ))
    }
}

/// Fused [`super::linear_cross_entropy`] on the CPU: hidden [N, D], weight [V, D] (both
/// f32, both f64, or both bf16 / f16), targets [N] → loss (scalar, or [N] for `None`;
/// f64 for f64 inputs, else f32), differentiable in hidden and weight (gradients in the
/// inputs' type). Rows go in chunks of [`chunk_rows`].
pub fn linear_cross_entropy(
    hidden: &Tensor,
    weight: &Tensor,
    targets: &Tensor,
    o: &CrossEntropyOptions,
) -> Result<Tensor> {
    let c = chunk_rows(hidden.dim(0)?, weight.dim(0)?);
    linear_cross_entropy_chunked(hidden, weight, targets, o, c)
}

/// [`linear_cross_entropy`] with an explicit number of rows per chunk (tests use small
/// chunks to cross chunk boundaries on small shapes).
pub fn linear_cross_entropy_chunked(
    hidden: &Tensor,
    weight: &Tensor,
    targets: &Tensor,
    o: &CrossEntropyOptions,
    chunk: usize,
) -> Result<Tensor> {
    let (n, d) = hidden.dims2()?;
    let (v, d2) = weight.dims2()?;
    if d != d2 {
        bail!("linear_cross_entropy: hidden [{n}, {d}] vs weight [{v}, {d2}]")
    }
    if v == 0 {
        bail!("linear_cross_entropy: weight of shape [0, {d}]: there must be at least one class")
    }
    let float = matches!(hidden.dtype(), DType::F32 | DType::F64) || is_half(hidden.dtype());
    if hidden.dtype() != weight.dtype() || !float {
        bail!(
            "linear_cross_entropy: hidden ({:?}) and weight ({:?}) must be of one type: \
             f32, f64, bf16 or f16",
            hidden.dtype(),
            weight.dtype()
        )
    }
    let tg: Vec<u32> = targets.to_dtype(DType::U32)?.flatten_all()?.to_vec1()?;
    if tg.len() != n {
        bail!("linear_cross_entropy: {} targets for {n} rows", tg.len())
    }
    let chunk = chunk.max(1);
    let want_dh = hidden.track_op();
    let want_dw = weight.track_op();
    let eager = o.reduction != Reduction::None;
    let counted = count_rows(&tg, o.ignore_index);
    let h = hidden.detach().contiguous()?;
    let w = weight.detach().contiguous()?;
    let r = chunked(
        &h,
        &w,
        &tg,
        o,
        RowScale::Uniform(row_factor(o, counted)),
        eager && want_dh,
        eager && want_dw,
        chunk,
    )?;
    let vals = reduce(o, &r.outs, counted);
    let (loss, shape) = loss_storage(vals, hidden.dtype() == DType::F64, o);
    if !(want_dh || want_dw) {
        return match loss {
            CpuStorage::F32(x) => Tensor::from_vec(x, shape, &Device::Cpu),
            CpuStorage::F64(x) => Tensor::from_vec(x, shape, &Device::Cpu),
            _ => unreachable!("loss_storage makes f32 or f64"),
        };
    }
    let op = LinearCeOp {
        opts: o.clone(),
        targets: tg,
        chunk,
        loss,
        loss_shape: shape,
        dh: Mutex::new(r.dh),
        dw: Mutex::new(r.dw),
    };
    let t = targets.to_dtype(DType::U32)?;
    hidden.apply_op3_arc(weight, &t, Arc::new(Box::new(op)))
}
