//! The optimizer: AdamW (and Muon for the matrices, when the config's `UpdateRule`
//! asks) updating each parameter's storage in place, parallel over fixed chunks.
//!
//! candle-nn's AdamW builds about ten full-size temporaries per parameter per step
//! and then copies the result back with `Var::set`. This one reads p, g, m, v and
//! writes p, m, v once per element, on rayon threads, with no allocation.
//!
//! The update is PyTorch's `torch.optim.AdamW` (decoupled weight decay), per element,
//! at step t (1-based), with wd the parameter's group weight decay:
//!   p ← p·(1 - lr·wd)
//!   m ← β1·m + (1-β1)·g
//!   v ← β2·v + (1-β2)·g²
//!   p ← p - (lr / (1-β1^t)) · m / (sqrt(v) / sqrt(1-β2^t) + eps)
//! The scalars are computed in f64 and rounded to f32 once; elements are f32.
//! A parameter without a gradient in the store is left alone (no decay either), as in
//! PyTorch.
//!
//! A group may instead be stepped by Muon ([`UpdateRule::Muon`], `super::muon`): its matrices
//! keep one momentum buffer (saved as their first moment) and no second moment, and
//! share the learning rate and decoupled decay of the AdamW groups.

use super::config::UpdateRule;
use candle_core::backprop::GradStore;
use candle_core::{
    bail, CpuStorage, DType, Device, InplaceOp1, InplaceOp2, Layout, Result, Tensor, Var,
};
use rayon::prelude::*;
use std::sync::Mutex;

/// Elements per parallel task.
const CHUNK: usize = 1 << 14;

/// Parameters that share a weight decay and an update rule (the trainer gives the
/// matrices of linear layers decay, and Muon when asked; biases, LayerNorm gains and
/// embeddings neither).
#[derive(Debug, Clone)]
pub struct ParamGroup {
    pub vars: Vec<Var>,
    pub weight_decay: f64,
    /// AdamW, or Muon (2-D parameters only).
    pub rule: UpdateRule,
}

/// Hyper-parameters other than the per-group weight decay. `lr` may be changed
/// before every step with [`Optimizer::set_lr`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWConfig {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
}

impl Default for AdamWConfig {
    /// PyTorch's defaults.
    fn default() -> Self {
        Self {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
        }
    }
}

struct Param {
    var: Var,
    weight_decay: f64,
    rule: UpdateRule,
    /// AdamW's first moment, or Muon's momentum buffer.
    m: Vec<f32>,
    /// AdamW's second moment; empty under Muon.
    v: Vec<f32>,
}

/// In-place AdamW (and Muon, per group) over f32 CPU parameters.
pub struct Optimizer {
    params: Vec<Param>,
    config: AdamWConfig,
    t: u64,
}

/// The per-step scalars, already rounded to f32.
#[derive(Clone, Copy)]
struct Scalars {
    decay: f32,      // 1 - lr·wd
    beta1: f32,      // β1
    one_m_b1: f32,   // 1 - β1
    beta2: f32,      // β2
    one_m_b2: f32,   // 1 - β2
    step_size: f32,  // lr / (1 - β1^t)
    grad_scale: f32, // the clipping factor, applied to g before anything else
    inv_bc2: f32,    // 1 / sqrt(1 - β2^t)
    eps: f32,
}

#[inline(always)]
fn update_chunk(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], s: Scalars) {
    for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
        let g = g * s.grad_scale;
        let mm = s.beta1 * *m + s.one_m_b1 * g;
        let vv = s.beta2 * *v + s.one_m_b2 * g * g;
        *m = mm;
        *v = vv;
        let denom = vv.sqrt() * s.inv_bc2 + s.eps;
        *p = *p * s.decay - s.step_size * mm / denom;
    }
}

/// The in-place kernel for one parameter: candle hands it the parameter's storage
/// mutably and the gradient's immutably; the moments come in through the mutex
/// (only this call touches them).
struct Update<'a> {
    m: Mutex<&'a mut [f32]>,
    v: Mutex<&'a mut [f32]>,
    s: Scalars,
}

impl InplaceOp2 for Update<'_> {
    fn name(&self) -> &'static str {
        "tinylm-adamw"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<()> {
        let (Some((p0, p1)), Some((g0, g1))) = (l1.contiguous_offsets(), l2.contiguous_offsets())
        else {
            bail!("adamw: parameter and gradient must be contiguous")
        };
        let CpuStorage::F32(p) = s1 else {
            bail!("adamw: parameters must be f32")
        };
        let CpuStorage::F32(g) = s2 else {
            bail!("adamw: gradients must be f32")
        };
        let (p, g) = (&mut p[p0..p1], &g[g0..g1]);
        let mut m = self.m.lock().unwrap();
        let mut v = self.v.lock().unwrap();
        if p.len() != g.len() || p.len() != m.len() {
            bail!(
                "adamw: parameter has {} elements, gradient {}",
                p.len(),
                g.len()
            )
        }
        let s = self.s;
        p.par_chunks_mut(CHUNK)
            .zip(g.par_chunks(CHUNK))
            .zip(m.par_chunks_mut(CHUNK))
            .zip(v.par_chunks_mut(CHUNK))
            .for_each(|(((p, g), m), v)| crate::cpu::simd::dispatch!(update_chunk(p, g, m, v, s)));
        Ok(())
    }
}

/// The second half of Muon's step of one matrix, in place: p ← p·decay - step·o, with
/// `o` from `super::muon::direction`.
struct MuonApply<'a> {
    o: &'a [f32],
    decay: f32,
    step: f32,
}

impl InplaceOp1 for MuonApply<'_> {
    fn name(&self) -> &'static str {
        "tinylm-muon"
    }

    fn cpu_fwd(&self, s: &mut CpuStorage, l: &Layout) -> Result<()> {
        let Some((p0, p1)) = l.contiguous_offsets() else {
            bail!("muon: parameter must be contiguous")
        };
        let CpuStorage::F32(p) = s else {
            bail!("muon: parameters must be f32")
        };
        if p1 - p0 != self.o.len() {
            bail!(
                "muon: parameter has {} elements, update {}",
                p1 - p0,
                self.o.len()
            )
        }
        super::muon::apply(&mut p[p0..p1], self.o, self.decay, self.step);
        Ok(())
    }
}

impl Optimizer {
    /// Moments start at zero, t at 0. Every parameter must be an f32 CPU tensor
    /// (contiguous, as `Var`s created by candle are), and 2-D under [`UpdateRule::Muon`].
    pub fn new(groups: Vec<ParamGroup>, config: AdamWConfig) -> Result<Self> {
        let mut params = Vec::new();
        for group in groups {
            for var in group.vars {
                if var.dtype() != DType::F32 || !var.device().is_cpu() {
                    bail!(
                        "adamw: parameters must be f32 on the CPU, got {:?}",
                        var.dtype()
                    )
                }
                if !var.is_contiguous() {
                    bail!("adamw: parameters must be contiguous")
                }
                if group.rule == UpdateRule::Muon && var.rank() != 2 {
                    bail!(
                        "muon: parameters must be matrices, got shape {:?}",
                        var.shape()
                    )
                }
                let n = var.elem_count();
                params.push(Param {
                    var,
                    weight_decay: group.weight_decay,
                    rule: group.rule,
                    m: vec![0.0; n],
                    v: match group.rule {
                        UpdateRule::AdamW => vec![0.0; n],
                        UpdateRule::Muon => Vec::new(),
                    },
                });
            }
        }
        Ok(Self {
            params,
            config,
            t: 0,
        })
    }

    pub fn lr(&self) -> f64 {
        self.config.lr
    }

    pub fn set_lr(&mut self, lr: f64) {
        self.config.lr = lr;
    }

    pub fn config(&self) -> AdamWConfig {
        self.config
    }

    /// Steps taken so far (the t of the bias correction of the last step).
    pub fn step_count(&self) -> u64 {
        self.t
    }

    /// The parameters, in the order of the groups and of the vars within each group:
    /// the order of [`Optimizer::moments`].
    pub fn vars(&self) -> impl Iterator<Item = &Var> {
        self.params.iter().map(|p| &p.var)
    }

    /// One AdamW step with the gradients in `grads`.
    pub fn step(&mut self, grads: &GradStore) -> Result<()> {
        let aligned: Vec<Option<Tensor>> = self
            .params
            .iter()
            .map(|p| grads.get(p.var.as_tensor()).cloned())
            .collect();
        self.step_scaled(&aligned, 1.0)
    }

    /// One AdamW step with `grads[i]` the gradient of the i-th parameter (the order of
    /// [`Optimizer::vars`]), each first multiplied by `grad_scale` (the clipping factor),
    /// in the same pass as the update.
    pub fn step_scaled(&mut self, grads: &[Option<Tensor>], grad_scale: f64) -> Result<()> {
        if grads.len() != self.params.len() {
            bail!(
                "adamw: {} gradients for {} parameters",
                grads.len(),
                self.params.len()
            )
        }
        self.t += 1;
        let c = self.config;
        let t = self.t as i32;
        // Muon's matrices first, one per thread (each reads its gradient and momentum
        // and writes its own parameter); each matrix's products run in a fixed order on
        // one thread, so the bits do not depend on which thread takes it.
        self.params
            .par_iter_mut()
            .zip(grads.par_iter())
            .filter(|(p, _)| p.rule == UpdateRule::Muon)
            .try_for_each(|(p, g)| -> Result<()> {
                let Some(g) = g else {
                    return Ok(());
                };
                let (rows, cols) = p.var.dims2()?;
                let m = &mut p.m;
                let o = crate::cpu::with_slice::<f32, _>(g, |g| {
                    Ok(super::muon::direction(
                        g,
                        m,
                        (rows, cols),
                        grad_scale as f32,
                    ))
                })?;
                let op = MuonApply {
                    o: &o,
                    decay: (1.0 - c.lr * p.weight_decay) as f32,
                    step: (c.lr * super::muon::update_scale(rows, cols)) as f32,
                };
                p.var.as_tensor().inplace_op1(&op)
            })?;
        for (p, g) in self.params.iter_mut().zip(grads) {
            let (UpdateRule::AdamW, Some(g)) = (p.rule, g) else {
                continue;
            };
            let g = g.contiguous()?;
            let s = Scalars {
                decay: (1.0 - c.lr * p.weight_decay) as f32,
                beta1: c.beta1 as f32,
                one_m_b1: (1.0 - c.beta1) as f32,
                beta2: c.beta2 as f32,
                one_m_b2: (1.0 - c.beta2) as f32,
                step_size: (c.lr / (1.0 - c.beta1.powi(t))) as f32,
                grad_scale: grad_scale as f32,
                inv_bc2: (1.0 / (1.0 - c.beta2.powi(t)).sqrt()) as f32,
                eps: c.eps as f32,
            };
            let op = Update {
                m: Mutex::new(&mut p.m),
                v: Mutex::new(&mut p.v),
                s,
            };
            p.var.as_tensor().inplace_op2(&g, &op)?;
        }
        Ok(())
    }

    /// True when every parameter is finite: the trainer checks this after each update
    /// (an update with an extreme learning rate or decay can overflow even from finite
    /// gradients), so that no checkpoint ever holds NaN or infinity.
    pub fn params_finite(&self) -> Result<bool> {
        for p in &self.params {
            let finite = crate::cpu::with_slice::<f32, _>(p.var.as_tensor(), |x| {
                Ok(x.par_chunks(CHUNK).all(|c| c.iter().all(|v| v.is_finite())))
            })?;
            if !finite {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Copies of the first and second moments, one (m, v) pair per parameter in the
    /// order of [`Optimizer::vars`], each shaped like its parameter (no v under Muon): what
    /// a checkpoint saves, with [`Optimizer::step_count`].
    pub fn moments(&self) -> Result<Vec<(Tensor, Option<Tensor>)>> {
        self.params
            .iter()
            .map(|p| {
                let shape = p.var.shape();
                let v = match p.rule {
                    UpdateRule::AdamW => Some(Tensor::from_slice(&p.v, shape, &Device::Cpu)?),
                    UpdateRule::Muon => None,
                };
                Ok((Tensor::from_slice(&p.m, shape, &Device::Cpu)?, v))
            })
            .collect()
    }

    /// The update rule of each parameter, in the order of [`Optimizer::vars`].
    pub fn rules(&self) -> impl Iterator<Item = UpdateRule> + '_ {
        self.params.iter().map(|p| p.rule)
    }

    /// Restores the state saved by [`Optimizer::moments`] and [`Optimizer::step_count`]; the
    /// next step then does exactly what it would have done without the round trip.
    pub fn set_state(&mut self, t: u64, moments: &[(Tensor, Option<Tensor>)]) -> Result<()> {
        if moments.len() != self.params.len() {
            bail!(
                "adamw: {} moment pairs for {} parameters",
                moments.len(),
                self.params.len()
            )
        }
        for (p, (m, v)) in self.params.iter_mut().zip(moments) {
            if v.is_some() != (p.rule == UpdateRule::AdamW) {
                bail!(
                    "adamw: a second moment is {} for parameter {:?}",
                    if v.is_some() { "given" } else { "missing" },
                    p.var.shape()
                )
            }
            let pairs = [(&mut p.m, Some(m)), (&mut p.v, v.as_ref())];
            for (dst, src) in pairs.into_iter().filter_map(|(d, s)| Some((d, s?))) {
                if src.shape() != p.var.shape() || src.dtype() != DType::F32 {
                    bail!(
                        "adamw: moment {:?} {:?} does not match parameter {:?}",
                        src.shape(),
                        src.dtype(),
                        p.var.shape()
                    )
                }
                *dst = src.flatten_all()?.to_vec1::<f32>()?;
            }
        }
        self.t = t;
        Ok(())
    }
}
