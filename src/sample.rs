//! Generation: logits processing (temperature, top-k, top-p) and the sampling loop with
//! a KV cache, streaming decoded text as it is produced.

use crate::model::{Gpt, KvCache};
use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::ops::ControlFlow;

/// How the next token is drawn from the logits.
#[derive(Debug, Clone)]
pub struct SamplingOptions {
    /// 0 means greedy (argmax).
    pub temperature: f32,
    /// Keep only the k most likely tokens (0 = all).
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches p (1.0 = all).
    pub top_p: f32,
    pub seed: u64,
}

impl Default for SamplingOptions {
    fn default() -> Self {
        Self {
            temperature: 0.8,
            top_k: 0,
            top_p: 0.95,
            seed: 1337,
        }
    }
}

impl SamplingOptions {
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.temperature >= 0.0 && self.temperature.is_finite(),
            "temperature must be >= 0, got {}",
            self.temperature
        );
        anyhow::ensure!(
            self.top_p > 0.0 && self.top_p <= 1.0,
            "top-p must be in (0, 1], got {}",
            self.top_p
        );
        Ok(())
    }
}

/// Draws one token id from `logits` [V].
pub fn pick(logits: &[f32], o: &SamplingOptions, rng: &mut ChaCha8Rng) -> u32 {
    let argmax = || {
        logits
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map(|(i, _)| i as u32)
            .unwrap_or(0)
    };
    if o.temperature == 0.0 {
        return argmax();
    }
    // Candidates sorted by logit, descending (ties by id, so the order is deterministic).
    let mut idx: Vec<usize> = (0..logits.len()).collect();
    idx.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
    if o.top_k > 0 {
        idx.truncate(o.top_k);
    }
    let max = logits[idx[0]];
    let mut probs: Vec<f64> = idx
        .iter()
        .map(|&i| (((logits[i] - max) / o.temperature) as f64).exp())
        .collect();
    let total: f64 = probs.iter().sum();
    probs.iter_mut().for_each(|p| *p /= total);
    if o.top_p < 1.0 {
        let mut cum = 0.0;
        let keep = probs
            .iter()
            .position(|p| {
                cum += p;
                cum >= o.top_p as f64
            })
            .map(|i| i + 1)
            .unwrap_or(probs.len());
        probs.truncate(keep);
        idx.truncate(keep);
    }
    let total: f64 = probs.iter().sum();
    let mut u = rng.gen::<f64>() * total;
    for (p, &i) in probs.iter().zip(&idx) {
        if u < *p {
            return i as u32;
        }
        u -= p;
    }
    idx[idx.len() - 1] as u32
}

/// Generates `max_new` tokens after `prompt` (ids), calling `on_token` with each new id.
/// With `use_cache`, keys and values are cached so each new token costs one position;
/// without, the whole window is recomputed every step (the reference the cached path is
/// tested against). Beyond the context, the cache is rebuilt from the last T/2 tokens.
pub fn generate(
    model: &Gpt,
    prompt: &[u32],
    max_new: usize,
    o: &SamplingOptions,
    use_cache: bool,
    device: &Device,
    mut on_token: impl FnMut(u32),
) -> anyhow::Result<Vec<u32>> {
    generate_until(model, prompt, max_new, o, use_cache, device, |id| {
        on_token(id);
        ControlFlow::Continue(())
    })
}

/// [`generate`] whose callback can end the generation early by returning
/// `ControlFlow::Break` (a stop sequence, a client that went away): then the tokens
/// made so far, the one just passed to `on_token` included, are returned.
pub fn generate_until(
    model: &Gpt,
    prompt: &[u32],
    max_new: usize,
    o: &SamplingOptions,
    use_cache: bool,
    device: &Device,
    mut on_token: impl FnMut(u32) -> ControlFlow<()>,
) -> anyhow::Result<Vec<u32>> {
    o.validate()?;
    // No graph: the KV cache would otherwise keep every step's autograd history.
    let model = &model.frozen();
    let t_max = model.config.block_size;
    let mut rng = ChaCha8Rng::seed_from_u64(o.seed);
    let mut ids: Vec<u32> = prompt.to_vec();
    if ids.is_empty() {
        ids.push(b'\n' as u32); // an empty prompt starts a new poem
    }
    let first_new = ids.len(); // ids[first_new..] are the generated tokens
    let mut cache = KvCache::new();
    let mut fed = 0; // ids[..fed] are in the cache
    for _ in 0..max_new {
        let logits = if use_cache {
            if cache.len() + (ids.len() - fed) > t_max {
                cache.clear();
                fed = ids.len().saturating_sub(t_max / 2);
            }
            let new = Tensor::new(&ids[fed..], device)?.unsqueeze(0)?; // [1, Tnew]
            let l = model.forward_cached(&new, &mut cache)?; // [1, V]
            fed = ids.len();
            l
        } else {
            let start = ids.len().saturating_sub(t_max);
            let x = Tensor::new(&ids[start..], device)?.unsqueeze(0)?; // [1, T]
            let all = model.logits(&x)?; // [1, T, V]
            all.narrow(1, x.dim(1)? - 1, 1)?.squeeze(1)? // [1, V]
        };
        let logits: Vec<f32> = logits.squeeze(0)?.to_vec1()?;
        let next = pick(&logits, o, &mut rng);
        ids.push(next);
        if on_token(next).is_break() {
            break;
        }
    }
    Ok(ids[first_new..].to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::GptConfig;

    #[test]
    fn generate_until_stops_where_the_callback_says() {
        let cfg = GptConfig {
            vocab_size: 256,
            block_size: 32,
            n_layer: 1,
            n_head: 2,
            n_embd: 16,
        };
        let model = Gpt::new(&cfg, 3, &Device::Cpu).unwrap();
        let o = SamplingOptions {
            seed: 7,
            ..Default::default()
        };
        let full = generate(&model, &[65, 66], 20, &o, true, &Device::Cpu, |_| {}).unwrap();
        assert_eq!(full.len(), 20);
        let mut seen = Vec::new();
        let part = generate_until(&model, &[65, 66], 20, &o, true, &Device::Cpu, |id| {
            seen.push(id);
            if seen.len() == 5 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })
        .unwrap();
        assert_eq!(part, full[..5]);
        assert_eq!(seen, full[..5]);
    }
}
