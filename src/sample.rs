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
    /// Keep only tokens at least this fraction as likely as the most likely one
    /// (0 = all): truncation that adapts to how peaked the distribution is.
    pub min_p: f32,
    /// Logits of tokens among the last [`REPETITION_WINDOW`] are divided by this when
    /// positive, multiplied when negative (CTRL's penalty; 1 = off).
    pub repetition_penalty: f32,
    pub seed: u64,
}

/// Tokens back that the repetition penalty looks at.
pub const REPETITION_WINDOW: usize = 64;

impl Default for SamplingOptions {
    fn default() -> Self {
        Self {
            // A little below 1: lower temperatures (and min-p) hand the probability
            // of the many possible next characters to the few punctuation tokens, and
            // lines break into fragments (BENCHMARKS.md, "Verse").
            temperature: 0.9,
            top_k: 0,
            top_p: 0.95,
            min_p: 0.0,
            // Regulated verse avoids repeating a character within a poem; a light
            // penalty also keeps "，" and "。" from cutting clauses short.
            repetition_penalty: 1.1,
            seed: 1337,
        }
    }
}

impl SamplingOptions {
    /// Checks every option against its documented range ([`crate::limits::RANGES`]).
    pub fn validate(&self) -> anyhow::Result<()> {
        use crate::limits::check_range;
        check_range(
            "temperature",
            self.temperature as f64,
            &self.temperature.to_string(),
        )?;
        check_range("top_p", self.top_p as f64, &self.top_p.to_string())?;
        check_range("top_k", self.top_k as f64, &self.top_k.to_string())?;
        check_range("min_p", self.min_p as f64, &self.min_p.to_string())?;
        check_range(
            "repetition_penalty",
            self.repetition_penalty as f64,
            &self.repetition_penalty.to_string(),
        )?;
        Ok(())
    }
}

/// Draws one token id from `logits` [V]; `recent` are the ids before it (the
/// repetition penalty's window).
pub fn pick(logits: &[f32], recent: &[u32], o: &SamplingOptions, rng: &mut ChaCha8Rng) -> u32 {
    let penalised;
    let logits = if o.repetition_penalty != 1.0 && !recent.is_empty() {
        let mut l = logits.to_vec();
        let window = &recent[recent.len().saturating_sub(REPETITION_WINDOW)..];
        let mut seen = std::collections::HashSet::new();
        for &id in window {
            if let Some(x) = l.get_mut(id as usize).filter(|_| seen.insert(id)) {
                *x = if *x > 0.0 {
                    *x / o.repetition_penalty
                } else {
                    *x * o.repetition_penalty
                };
            }
        }
        penalised = l;
        &penalised[..]
    } else {
        logits
    };
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
    if o.min_p > 0.0 {
        // probs[0] = 1 is the most likely token's weight: keep those >= min_p of it.
        let keep = probs
            .iter()
            .take_while(|&&p| p >= o.min_p as f64)
            .count()
            .max(1);
        probs.truncate(keep);
        idx.truncate(keep);
    }
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
/// tested against). Both see the same window, so both give the same tokens: the tokens
/// since the window last filled the context T; when it would pass T, it restarts from
/// the last T/2 tokens (at least one).
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
    // The caller encodes its idea of "nothing yet" (e.g. a line break) with its own
    // tokenizer: an id chosen here would mean different text in every vocabulary.
    anyhow::ensure!(!prompt.is_empty(), "the prompt holds no tokens");
    let v = model.config.vocab_size;
    if let Some(bad) = prompt.iter().find(|&&id| id as usize >= v) {
        anyhow::bail!("prompt token id {bad} is outside the model's vocabulary of {v}");
    }
    // No graph: the KV cache would otherwise keep every step's autograd history.
    let model = &model.frozen();
    let t_max = model.config.block_size;
    let mut rng = ChaCha8Rng::seed_from_u64(o.seed);
    let mut ids: Vec<u32> = prompt.to_vec();
    let mut cache = KvCache::new();
    // Restarting from T/2 tokens rather than sliding by one lets the cache be rebuilt
    // once per T/2 new tokens instead of every token; the uncached path follows the same
    // window so that it stays the cached path's reference.
    let keep = (t_max / 2).max(1);
    let mut start = 0; // ids[start..] is the window the model sees
    let mut fed = 0; // ids[start..fed] are in the cache
    for _ in 0..max_new {
        if ids.len() - start > t_max {
            start = ids.len() - keep;
            cache.clear();
            fed = start;
        }
        let logits = if use_cache {
            let new = Tensor::new(&ids[fed..], device)?.unsqueeze(0)?; // [1, Tnew]
            let l = model.forward_cached(&new, &mut cache)?; // [1, V]
            fed = ids.len();
            l
        } else {
            let x = Tensor::new(&ids[start..], device)?.unsqueeze(0)?; // [1, T]
            let all = model.logits(&x)?; // [1, T, V]
            all.narrow(1, x.dim(1)? - 1, 1)?.squeeze(1)? // [1, V]
        };
        let logits: Vec<f32> = logits.squeeze(0)?.to_vec1()?;
        let next = pick(&logits, &ids, o, &mut rng);
        ids.push(next);
        if on_token(next).is_break() {
            break;
        }
    }
    Ok(ids[prompt.len()..].to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn draws(logits: &[f32], recent: &[u32], o: &SamplingOptions) -> Vec<usize> {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let mut counts = vec![0; logits.len()];
        for _ in 0..2000 {
            counts[pick(logits, recent, o, &mut rng) as usize] += 1;
        }
        counts
    }

    #[test]
    fn min_p_keeps_tokens_near_the_top_only() {
        // Probabilities 0.5, 0.3, 0.2 at temperature 1.
        let logits = [0.5f32.ln(), 0.3f32.ln(), 0.2f32.ln()];
        let o = |min_p| SamplingOptions {
            temperature: 1.0,
            top_p: 1.0,
            min_p,
            ..Default::default()
        };
        let all = draws(&logits, &[], &o(0.0));
        assert!(all.iter().all(|&n| n > 200), "{all:?}");
        // 0.3 >= 0.5 x 0.5 is kept, 0.2 is not.
        let cut = draws(&logits, &[], &o(0.5));
        assert_eq!(cut[2], 0, "{cut:?}");
        assert!(cut[0] > 1000 && cut[1] > 500, "{cut:?}");
    }

    #[test]
    fn repetition_penalty_lowers_recent_tokens() {
        let greedy = |penalty, recent: &[u32]| {
            let o = SamplingOptions {
                temperature: 0.0,
                repetition_penalty: penalty,
                ..Default::default()
            };
            pick(
                &[2.0, 2.1, -1.0],
                recent,
                &o,
                &mut ChaCha8Rng::seed_from_u64(0),
            )
        };
        assert_eq!(greedy(1.0, &[1, 1]), 1);
        assert_eq!(greedy(2.0, &[1, 1]), 0, "2.1 / 2 < 2");
        assert_eq!(greedy(2.0, &[0, 1]), 1, "both penalised: 1.05 > 1.0");
        // Outside the window the penalty no longer applies.
        let mut far = vec![1u32];
        far.extend(std::iter::repeat_n(2u32, REPETITION_WINDOW));
        assert_eq!(greedy(2.0, &far), 1);
    }

    #[test]
    fn no_cache_gives_the_cached_tokens_past_the_context() {
        // T = 1 keeps a window of one token (T/2 would be none).
        for (block_size, positions) in [
            (16, crate::model::Positions::Learned),
            (16, crate::model::Positions::Rotary),
            (1, crate::model::Positions::Rotary),
        ] {
            let cfg = crate::model::GptConfig {
                vocab_size: 256,
                block_size,
                n_layer: 1,
                n_head: 2,
                n_embd: 16,
                positions,
            };
            let model = Gpt::new(&cfg, 5, &Device::Cpu).unwrap();
            for temperature in [0.0, 1.0] {
                let o = SamplingOptions {
                    temperature,
                    seed: 7,
                    ..Default::default()
                };
                // A prompt longer than T, then 4·T + 3 tokens: the window restarts
                // several times.
                let prompt: Vec<u32> = (0..block_size as u32 + 3).map(|i| 40 + i).collect();
                let n = 4 * block_size + 3;
                let run = |cached| {
                    generate(&model, &prompt, n, &o, cached, &Device::Cpu, |_| {}).unwrap()
                };
                let (cached, full) = (run(true), run(false));
                assert_eq!(cached.len(), n);
                assert_eq!(
                    cached, full,
                    "T {block_size}, {positions:?}, temperature {temperature}"
                );
            }
        }
    }

    #[test]
    fn generate_until_stops_where_the_callback_says() {
        let cfg = crate::model::GptConfig {
            vocab_size: 256,
            block_size: 32,
            n_layer: 1,
            n_head: 2,
            n_embd: 16,
            positions: Default::default(),
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
