//! Fused attention as a candle `CustomOp3` (q, k, v) with an explicit backward: the
//! forward runs [`kernel::forward`] and keeps the log-sum-exp for [`kernel::backward`]
//! when a gradient is tracked. See [`kernel`] for the algorithm.

use super::kernel::{self, Dims, Elem, BLOCK_K, BLOCK_Q};
use crate::cpu::storage_slice;
use candle_core::{bail, CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use std::sync::{Arc, Mutex};

/// How [`attention`] runs.
#[derive(Debug, Clone, Copy)]
pub struct FusedOptions {
    /// Causal mask (query i sees keys <= i + Tk - Tq). `false` is full attention, kept
    /// for benchmarks (the causal/non-causal speed ratio) and completeness.
    pub causal: bool,
    /// Query rows per tile.
    pub block_q: usize,
    /// Key columns per tile.
    pub block_k: usize,
}

impl Default for FusedOptions {
    /// 64x64 tiles: with D = 64 the Q, K, V and S tiles are 16 KiB each, and the S tile
    /// plus one operand fit in the 32 KiB L1 while the rest stays in L2.
    fn default() -> Self {
        Self {
            causal: true,
            block_q: BLOCK_Q,
            block_k: BLOCK_K,
        }
    }
}

/// Fused attention of q [B, H, Tq, D] against k, v [B, H, Tk, D] -> [B, H, Tq, D],
/// scaled by 1/sqrt(D), Tq <= Tk when causal. Differentiable in q, k and v (explicit
/// backward). Any layout is accepted (non-contiguous inputs are copied). f32 and f64,
/// CPU only.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, opts: FusedOptions) -> Result<Tensor> {
    let (b, h, tq, d) = q.dims4()?;
    let (bk, hk, tk, dk) = k.dims4()?;
    if (bk, hk, dk) != (b, h, d) || v.dims4()? != (b, h, tk, d) {
        bail!(
            "fused attention: shapes q {:?} k {:?} v {:?} do not match",
            q.shape(),
            k.shape(),
            v.shape()
        );
    }
    if opts.causal && tq > tk {
        bail!("fused attention: causal needs Tq <= Tk, got Tq = {tq}, Tk = {tk}");
    }
    if opts.block_q == 0 || opts.block_k == 0 {
        bail!("fused attention: zero block size");
    }
    let q = q.contiguous()?;
    let k = k.contiguous()?;
    let v = v.contiguous()?;
    let track = q.track_op() || k.track_op() || v.track_op();
    let op = FusedAttention {
        opts,
        save_lse: track,
        lse: Mutex::new(None),
    };
    if track {
        q.apply_op3_arc(&k, &v, Arc::new(Box::new(op)))
    } else {
        q.apply_op3_no_bwd(&k, &v, &op)
    }
}

enum Lse {
    F32(Vec<f32>),
    F64(Vec<f64>),
}

/// The custom op; holds the forward's log-sum-exp for the backward when a gradient
/// is tracked (the op lives in the graph behind an Arc).
struct FusedAttention {
    opts: FusedOptions,
    save_lse: bool,
    lse: Mutex<Option<Lse>>,
}

fn dims_of<T: Elem>(opts: &FusedOptions, lq: &Layout, lk: &Layout) -> Result<Dims<T>> {
    let (b, h, tq, d) = lq.shape().dims4()?;
    let tk = lk.shape().dims4()?.2;
    Ok(Dims::new(
        (b * h, tq, tk, d),
        opts.causal,
        (opts.block_q, opts.block_k),
    ))
}

fn contiguous<'a, T>(data: &'a [T], l: &Layout) -> Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => bail!("fused attention: non-contiguous operand"),
    }
}

impl FusedAttention {
    fn fwd_typed<T: Elem + candle_core::WithDType>(
        &self,
        q: &[T],
        k: &[T],
        v: &[T],
        lq: &Layout,
        lk: &Layout,
    ) -> Result<(Vec<T>, Vec<T>)> {
        let dm = dims_of::<T>(&self.opts, lq, lk)?;
        Ok(kernel::forward(
            &dm,
            contiguous(q, lq)?,
            contiguous(k, lk)?,
            v,
            self.save_lse,
        ))
    }

    fn bwd_typed<T: Elem + candle_core::WithDType>(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        res: &Tensor,
        grad: &Tensor,
        saved: Option<&[T]>,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let grad = grad.contiguous()?;
        let res = res.contiguous()?;
        let (sq, lq) = q.storage_and_layout();
        let (sk, lk) = k.storage_and_layout();
        let (sv, lv) = v.storage_and_layout();
        let (so, lo) = res.storage_and_layout();
        let (sg, lg) = grad.storage_and_layout();
        let dm = dims_of::<T>(&self.opts, lq, lk)?;
        let (qs, ks, vs) = (
            storage_slice::<T>(&sq, lq)?,
            storage_slice::<T>(&sk, lk)?,
            storage_slice::<T>(&sv, lv)?,
        );
        let recomputed;
        let lse = match saved {
            Some(l) => l,
            None => {
                recomputed = kernel::forward(&dm, qs, ks, vs, true).1;
                &recomputed
            }
        };
        let (dq, dk, dv) = kernel::backward(
            &dm,
            qs,
            ks,
            vs,
            storage_slice::<T>(&so, lo)?,
            storage_slice::<T>(&sg, lg)?,
            lse,
        );
        let dev = q.device();
        Ok((
            Tensor::from_vec(dq, lq.shape(), dev)?,
            Tensor::from_vec(dk, lk.shape(), dev)?,
            Tensor::from_vec(dv, lv.shape(), dev)?,
        ))
    }
}

impl CustomOp3 for FusedAttention {
    fn name(&self) -> &'static str {
        "fused-attention"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let shape = l1.shape().clone();
        match (s1, s2, s3) {
            (CpuStorage::F32(q), CpuStorage::F32(k), CpuStorage::F32(v)) => {
                let (o, lse) = self.fwd_typed(q, k, contiguous(v, l3)?, l1, l2)?;
                if self.save_lse {
                    *self.lse.lock().unwrap() = Some(Lse::F32(lse));
                }
                Ok((CpuStorage::F32(o), shape))
            }
            (CpuStorage::F64(q), CpuStorage::F64(k), CpuStorage::F64(v)) => {
                let (o, lse) = self.fwd_typed(q, k, contiguous(v, l3)?, l1, l2)?;
                if self.save_lse {
                    *self.lse.lock().unwrap() = Some(Lse::F64(lse));
                }
                Ok((CpuStorage::F64(o), shape))
            }
            _ => bail!("fused attention: f32 or f64 q, k, v of one dtype only"),
        }
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let saved = self.lse.lock().unwrap();
        let (dq, dk, dv) = match (q.dtype(), saved.as_ref()) {
            (candle_core::DType::F32, Some(Lse::F32(l))) => {
                self.bwd_typed::<f32>(q, k, v, res, grad, Some(l))?
            }
            (candle_core::DType::F32, _) => self.bwd_typed::<f32>(q, k, v, res, grad, None)?,
            (candle_core::DType::F64, Some(Lse::F64(l))) => {
                self.bwd_typed::<f64>(q, k, v, res, grad, Some(l))?
            }
            (candle_core::DType::F64, _) => self.bwd_typed::<f64>(q, k, v, res, grad, None)?,
            (dt, _) => bail!("fused attention: unsupported dtype {dt:?}"),
        };
        Ok((Some(dq), Some(dk), Some(dv)))
    }
}
