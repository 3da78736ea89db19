//! Fused GELU, tanh approximation (GPT-2's), forward and backward in one parallel,
//! vectorised pass each.
//!
//! gelu(x) = 0.5·x·(1 + tanh(u)),  u = k·(x + 0.044715·x³),  k = sqrt(2/π).
//! Since 1 + tanh(u) = 2·σ(2u), this is x·σ(2u) = x / (1 + e^(-2u)): one exp, and
//! no cancellation for large negative x (where 1 + tanh(u) loses all its digits).
//! gelu'(x) = s + x·s·(1 - s)·2·du/dx,  s = σ(2u),  du/dx = k·(1 + 3·0.044715·x²).

use super::real::{Real, Stored};
use crate::cpu::simd::dispatch;
use crate::cpu::{assume_init, contiguous_slice, uninit_vec, with_slice};
use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use std::marker::PhantomData;
use std::mem::MaybeUninit;

/// Elements per parallel task: large enough to amortise rayon's scheduling, small
/// enough to balance 2-16 threads at the model's 4M-element activations.
const CHUNK: usize = 1 << 15;
const K: f64 = 0.797_884_560_802_865_4; // sqrt(2/π)
const A: f64 = 0.044_715;

pub(crate) struct GeluOp<T>(PhantomData<T>);

impl<T> GeluOp<T> {
    pub(crate) fn new() -> Self {
        Self(PhantomData)
    }
}

/// (s, 1 - s) with s = σ(2u), written for the vectoriser. 1 - s is computed as
/// e·s, not 1 - s, which would lose its digits where s is close to 1 (x > 3).
#[inline(always)]
fn sig2u<T: Real>(x: T) -> (T, T) {
    let k2 = T::from_f64(-2.0 * K);
    let a = T::from_f64(A);
    let e = (k2 * (x + a * x * x * x)).exp_fast();
    let s = T::one() / (T::one() + e);
    (s, e * s)
}

#[inline(always)]
fn fwd_chunk<T: Real, Y: Stored<T>>(x: &[T], y: &mut [MaybeUninit<Y>]) {
    for (y, &x) in y.iter_mut().zip(x) {
        y.write(Y::from_real(x * sig2u(x).0));
    }
}

#[inline(always)]
fn bwd_chunk<T: Real>(x: &[T], dy: &[T], dx: &mut [MaybeUninit<T>]) {
    let two_k = T::from_f64(2.0 * K);
    let three_a = T::from_f64(3.0 * A);
    for ((dx, &x), &dy) in dx.iter_mut().zip(x).zip(dy) {
        let (s, one_m_s) = sig2u(x);
        let d = s + x * s * one_m_s * two_k * (T::one() + three_a * x * x);
        dx.write(dy * d);
    }
}

/// y = gelu(x), elementwise.
pub(crate) fn forward<T: Real>(x: &[T]) -> Vec<T> {
    forward_as(x)
}

/// [`forward`] with y stored as `Y` (bf16 for a `--dtype bf16` product's input).
pub(crate) fn forward_as<T: Real, Y: Stored<T>>(x: &[T]) -> Vec<Y> {
    let mut y = uninit_vec::<Y>(x.len());
    y.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK))
        .for_each(|(y, x)| dispatch!(fwd_chunk(x, y)));
    // SAFETY: the chunks cover y and fwd_chunk writes all of each.
    unsafe { assume_init(y) }
}

/// dx = dy·gelu'(x), elementwise.
pub(crate) fn backward<T: Real>(x: &[T], dy: &[T]) -> Vec<T> {
    let mut dx = uninit_vec::<T>(x.len());
    dx.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK).zip(dy.par_chunks(CHUNK)))
        .for_each(|(dx, (x, dy))| dispatch!(bwd_chunk(x, dy, dx)));
    // SAFETY: the chunks cover dx and bwd_chunk writes all of each.
    unsafe { assume_init(dx) }
}

impl<T: Real> CustomOp1 for GeluOp<T> {
    fn name(&self) -> &'static str {
        "tinylm-gelu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_slice::<T>(s, l)?;
        Ok((T::to_cpu_storage_owned(forward(x)), l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let dx = with_slice::<T, _>(x, |xs| {
            with_slice::<T, _>(grad, |dys| Ok(backward(xs, dys)))
        })?;
        Ok(Some(Tensor::from_vec(dx, x.shape(), x.device())?))
    }
}
