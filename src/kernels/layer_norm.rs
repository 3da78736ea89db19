//! Fused LayerNorm: one pass per row forward, one pass per row backward, parallel
//! over fixed chunks of rows.
//!
//! Forward, per row of x (C values):
//!   mean = Σx/C,  rstd = 1/sqrt(Σ(x-mean)²/C + eps),  xhat = (x-mean)·rstd,
//!   y = xhat·gain + bias
//! Backward, with g = dy·gain:
//!   dx = rstd·(g - mean(g) - xhat·mean(g·xhat))
//!   dgain = Σ_rows dy·xhat,  dbias = Σ_rows dy
//! (the standard derivation: xhat is invariant to shifting x and to scaling x - mean,
//! so dx is g minus its projections on 1 and on xhat, times rstd).

use super::real::{Real, Stored};
use crate::cpu::simd::dispatch;
use crate::cpu::{assume_init, contiguous_slice, uninit_vec, with_slice};
use candle_core::{bail, CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use std::mem::MaybeUninit;
use std::sync::Mutex;

/// Rows per parallel task. Fixed (not derived from the thread count) so that the
/// dgain/dbias partial sums, and so the results, do not depend on the thread count.
const ROWS_PER_CHUNK: usize = 32;

/// The op as it sits in candle's graph. The forward stashes per-row mean and rstd
/// (2·N values) for the backward, so the backward does not recompute the row stats.
pub(crate) struct LayerNormOp<T> {
    eps: f64,
    stats: Mutex<Option<(Vec<T>, Vec<T>)>>,
}

impl<T> LayerNormOp<T> {
    pub(crate) fn new(eps: f64) -> Self {
        Self {
            eps,
            stats: Mutex::new(None),
        }
    }
}

/// Σ of a slice with 16 independent accumulators: vectorises, and is more accurate
/// than a single running sum (errors grow with C/16, not C).
#[inline(always)]
fn sum_lanes<T: Real>(xs: &[T], f: impl Fn(usize) -> T) -> T {
    const L: usize = 16;
    let mut acc = [T::zero(); L];
    let full = xs.len() / L * L;
    let mut i = 0;
    while i < full {
        for (l, a) in acc.iter_mut().enumerate() {
            *a += f(i + l);
        }
        i += L;
    }
    let mut tail = T::zero();
    for j in full..xs.len() {
        tail += f(j);
    }
    // Pairwise fold of the lanes: a fixed order, so results are reproducible.
    let mut w = L;
    while w > 1 {
        w /= 2;
        for l in 0..w {
            acc[l] += acc[l + w];
        }
    }
    acc[0] + tail
}

/// Forward over a chunk of rows. x, y: [rows, C]; mean, rstd: [rows].
#[inline(always)]
fn fwd_rows<T: Real, Y: Stored<T>>(
    x: &[T],
    gain: &[T],
    bias: &[T],
    eps: T,
    y: &mut [MaybeUninit<Y>],
    mean: &mut [MaybeUninit<T>],
    rstd: &mut [MaybeUninit<T>],
) {
    let c = gain.len();
    let inv_c = T::one() / T::from_f64(c as f64);
    for (r, (xr, yr)) in x.chunks_exact(c).zip(y.chunks_exact_mut(c)).enumerate() {
        let mu = sum_lanes(xr, |i| xr[i]) * inv_c;
        // Two passes (mean, then centred squares): no cancellation for rows with a
        // large mean, unlike E[x²] - E[x]².
        let var = sum_lanes(xr, |i| {
            let d = xr[i] - mu;
            d * d
        }) * inv_c;
        let rs = T::one() / (var + eps).sqrt();
        for i in 0..c {
            yr[i].write(Y::from_real((xr[i] - mu) * rs * gain[i] + bias[i]));
        }
        mean[r].write(mu);
        rstd[r].write(rs);
    }
}

/// Backward over a chunk of rows: writes dx and adds this chunk's dgain/dbias into
/// `dg`, `db` (zeroed by the caller).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn bwd_rows<T: Real>(
    x: &[T],
    dy: &[T],
    gain: &[T],
    mean: &[T],
    rstd: &[T],
    dx: Option<&mut [MaybeUninit<T>]>,
    dg: &mut [T],
    db: &mut [T],
) {
    let c = gain.len();
    let inv_c = T::one() / T::from_f64(c as f64);
    let rows = x.len() / c;
    let mut dx = dx;
    for r in 0..rows {
        let xr = &x[r * c..(r + 1) * c];
        let dyr = &dy[r * c..(r + 1) * c];
        let (mu, rs) = (mean[r], rstd[r]);
        for i in 0..c {
            let xhat = (xr[i] - mu) * rs;
            dg[i] += dyr[i] * xhat;
            db[i] += dyr[i];
        }
        if let Some(dx) = dx.as_deref_mut() {
            let a = sum_lanes(xr, |i| dyr[i] * gain[i]) * inv_c;
            let b = sum_lanes(xr, |i| dyr[i] * gain[i] * (xr[i] - mu) * rs) * inv_c;
            let dxr = &mut dx[r * c..(r + 1) * c];
            for i in 0..c {
                let xhat = (xr[i] - mu) * rs;
                dxr[i].write(rs * (dyr[i] * gain[i] - a - xhat * b));
            }
        }
    }
}

/// x [N, C] -> (y [N, C], mean [N], rstd [N]).
pub(crate) fn forward<T: Real>(
    x: &[T],
    gain: &[T],
    bias: &[T],
    eps: f64,
) -> (Vec<T>, Vec<T>, Vec<T>) {
    forward_as(x, gain, bias, eps)
}

/// [`forward`] with y stored as `Y` (bf16 for a `--dtype bf16` product's input).
pub(crate) fn forward_as<T: Real, Y: Stored<T>>(
    x: &[T],
    gain: &[T],
    bias: &[T],
    eps: f64,
) -> (Vec<Y>, Vec<T>, Vec<T>) {
    let c = gain.len();
    let n = x.len() / c;
    let mut y = uninit_vec::<Y>(x.len());
    let mut mean = uninit_vec::<T>(n);
    let mut rstd = uninit_vec::<T>(n);
    let eps = T::from_f64(eps);
    y.par_chunks_mut(ROWS_PER_CHUNK * c)
        .zip(mean.par_chunks_mut(ROWS_PER_CHUNK))
        .zip(rstd.par_chunks_mut(ROWS_PER_CHUNK))
        .zip(x.par_chunks(ROWS_PER_CHUNK * c))
        .for_each(|(((y, m), rs), x)| dispatch!(fwd_rows(x, gain, bias, eps, y, m, rs)));
    // SAFETY: the chunks cover every row, and fwd_rows writes every element of them.
    unsafe { (assume_init(y), assume_init(mean), assume_init(rstd)) }
}

/// Gradients from x [N, C], dy [N, C], gain [C] and the stashed mean, rstd [N]:
/// (dx [N, C] if `need_dx`, dgain [C], dbias [C]).
pub(crate) fn backward<T: Real>(
    x: &[T],
    dy: &[T],
    gain: &[T],
    mean: &[T],
    rstd: &[T],
    need_dx: bool,
) -> (Option<Vec<T>>, Vec<T>, Vec<T>) {
    let c = gain.len();
    let n = x.len() / c;
    let n_chunks = n.div_ceil(ROWS_PER_CHUNK);
    let mut dx = need_dx.then(|| uninit_vec::<T>(x.len()));
    // Per-chunk partials [n_chunks, C], summed below in chunk order.
    let mut dg_parts = vec![T::zero(); n_chunks * c];
    let mut db_parts = vec![T::zero(); n_chunks * c];
    let rows = ROWS_PER_CHUNK * c;
    let task = |k: usize, dx: Option<&mut [MaybeUninit<T>]>, dg: &mut [T], db: &mut [T]| {
        let (r0, r1) = (k * ROWS_PER_CHUNK, ((k + 1) * ROWS_PER_CHUNK).min(n));
        let xs = &x[r0 * c..r1 * c];
        let dys = &dy[r0 * c..r1 * c];
        let (m, rs) = (&mean[r0..r1], &rstd[r0..r1]);
        dispatch!(bwd_rows(xs, dys, gain, m, rs, dx, dg, db))
    };
    let parts = dg_parts.par_chunks_mut(c).zip(db_parts.par_chunks_mut(c));
    match dx.as_mut() {
        Some(dx) => parts
            .zip(dx.par_chunks_mut(rows))
            .enumerate()
            .for_each(|(k, ((dg, db), dx))| task(k, Some(dx), dg, db)),
        None => parts
            .enumerate()
            .for_each(|(k, (dg, db))| task(k, None, dg, db)),
    }
    let mut dgain = vec![T::zero(); c];
    let mut dbias = vec![T::zero(); c];
    for (pg, pb) in dg_parts.chunks_exact(c).zip(db_parts.chunks_exact(c)) {
        for i in 0..c {
            dgain[i] += pg[i];
            dbias[i] += pb[i];
        }
    }
    // SAFETY: the chunks cover every row, and bwd_rows writes every element of dx.
    let dx = dx.map(|d| unsafe { assume_init(d) });
    (dx, dgain, dbias)
}

impl<T: Real> CustomOp3 for LayerNormOp<T> {
    fn name(&self) -> &'static str {
        "tinylm-layer-norm"
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
        let x = contiguous_slice::<T>(s1, l1)?;
        let gain = contiguous_slice::<T>(s2, l2)?;
        let bias = contiguous_slice::<T>(s3, l3)?;
        let c = l1.dims().last().copied().unwrap_or(0);
        if c == 0 || gain.len() != c || bias.len() != c {
            bail!(
                "layer_norm: x {:?}, gain {:?}, bias {:?}: gain and bias must be [C] with C = x's last dim > 0",
                l1.dims(),
                l2.dims(),
                l3.dims()
            )
        }
        let (y, mean, rstd) = forward(x, gain, bias, self.eps);
        *self.stats.lock().unwrap() = Some((mean, rstd));
        Ok((T::to_cpu_storage_owned(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gain: &Tensor,
        _bias: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let stats = self.stats.lock().unwrap();
        let Some((mean, rstd)) = stats.as_ref() else {
            bail!("layer_norm backward: forward statistics missing")
        };
        let need_dx = x.track_op();
        let (dx, dg, db) = with_slice::<T, _>(x, |xs| {
            with_slice::<T, _>(grad, |dys| {
                with_slice::<T, _>(gain, |gs| Ok(backward(xs, dys, gs, mean, rstd, need_dx)))
            })
        })?;
        let dev = x.device();
        let dx = dx
            .map(|d| Tensor::from_vec(d, x.shape(), dev))
            .transpose()?;
        let dg = Tensor::from_vec(dg, gain.shape(), dev)?;
        let db = Tensor::from_vec(db, gain.shape(), dev)?;
        Ok((dx, Some(dg), Some(db)))
    }
}
