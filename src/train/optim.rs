//! AdamW with parameter groups (PyTorch semantics: decoupled weight decay, bias
//! correction), its moments exposed for checkpoints.

use candle_core::{Result, Tensor, Var};
use std::collections::HashMap;

struct ParamState {
    name: String,
    var: Var,
    m: Tensor,
    v: Tensor,
    weight_decay: f64,
}

pub struct AdamW {
    params: Vec<ParamState>,
    /// Steps taken (bias correction uses it).
    t: usize,
    beta1: f64,
    beta2: f64,
    eps: f64,
}

/// Which parameters get weight decay: matrices of linear layers only. Biases, LayerNorm
/// gains and the embeddings (token and position) are left alone, as in nanoGPT/minGPT.
pub fn decays(name: &str) -> bool {
    name.ends_with(".weight") && !name.contains("ln_")
}

impl AdamW {
    pub fn new(
        params: &[(String, Var)],
        weight_decay: f64,
        beta1: f64,
        beta2: f64,
    ) -> Result<Self> {
        let params = params
            .iter()
            .map(|(name, var)| {
                Ok(ParamState {
                    name: name.clone(),
                    var: var.clone(),
                    m: var.zeros_like()?,
                    v: var.zeros_like()?,
                    weight_decay: if decays(name) { weight_decay } else { 0.0 },
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            params,
            t: 0,
            beta1,
            beta2,
            eps: 1e-8,
        })
    }

    /// One update with learning rate `lr`; every gradient is multiplied by `grad_scale`
    /// first (the clipping factor). Parameters without a gradient are left unchanged.
    /// `grads[i]` belongs to the i-th parameter given to `new`.
    pub fn step(&mut self, grads: &[Option<Tensor>], lr: f64, grad_scale: f64) -> Result<()> {
        self.t += 1;
        let (b1, b2) = (self.beta1, self.beta2);
        let c1 = 1.0 - b1.powi(self.t as i32);
        let c2 = 1.0 - b2.powi(self.t as i32);
        for (p, g) in self.params.iter_mut().zip(grads) {
            let Some(g) = g else { continue };
            let g = if grad_scale != 1.0 {
                (g * grad_scale)?
            } else {
                g.clone()
            };
            p.m = ((&p.m * b1)? + (&g * (1.0 - b1))?)?;
            p.v = ((&p.v * b2)? + (g.sqr()? * (1.0 - b2))?)?;
            let m_hat = (&p.m / c1)?;
            let v_hat = (&p.v / c2)?;
            let update = (m_hat / (v_hat.sqrt()? + self.eps)?)?;
            let decayed = (p.var.as_tensor() * (1.0 - lr * p.weight_decay))?;
            p.var.set(&(decayed - (update * lr)?)?)?;
        }
        Ok(())
    }

    pub fn steps_taken(&self) -> usize {
        self.t
    }

    /// Moments as "m.<param>" and "v.<param>".
    pub fn state_tensors(&self) -> HashMap<String, Tensor> {
        let mut out = HashMap::new();
        for p in &self.params {
            out.insert(format!("m.{}", p.name), p.m.clone());
            out.insert(format!("v.{}", p.name), p.v.clone());
        }
        out
    }

    /// Restores moments saved by `state_tensors` and the step count.
    pub fn load_state(
        &mut self,
        tensors: &HashMap<String, Tensor>,
        t: usize,
    ) -> anyhow::Result<()> {
        for p in &mut self.params {
            for (key, slot) in [
                (format!("m.{}", p.name), &mut p.m),
                (format!("v.{}", p.name), &mut p.v),
            ] {
                let saved = tensors
                    .get(&key)
                    .ok_or_else(|| anyhow::anyhow!("optimizer state lacks {key}"))?;
                anyhow::ensure!(
                    saved.dims() == p.var.dims(),
                    "optimizer state {key} has shape {:?}, expected {:?}",
                    saved.dims(),
                    p.var.dims()
                );
                *slot = saved.clone();
            }
        }
        self.t = t;
        Ok(())
    }
}
