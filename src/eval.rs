//! Evaluation: mean loss per token, bits per byte, bits per character and perplexity,
//! from per-token losses (`Reduction::None`) so that every target is counted once.

use crate::data::bytes_and_chars;
use crate::loss::{CrossEntropyOptions, Reduction};
use crate::model::Gpt;
use crate::tokenizer::Tokenizer;
use candle_core::{Device, Tensor};
use serde::Serialize;

/// Target ids equal to this are not scored (windows that overlap scored text).
const NOT_SCORED: u32 = u32::MAX;

/// Totals over the scored tokens.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct EvalReport {
    /// Mean cross-entropy per token, in nats.
    pub loss: f64,
    pub bits_per_byte: f64,
    pub bits_per_char: f64,
    pub perplexity: f64,
    /// Tokenizer efficiency: 1 for bytes, ~3 for a BPE on this corpus.
    pub bytes_per_token: f64,
    pub tokens: u64,
    pub bytes: u64,
    pub chars: u64,
}

impl EvalReport {
    fn from_sum(nats: f64, tokens: u64, bytes: u64, chars: u64) -> Self {
        let bits = nats / std::f64::consts::LN_2;
        let loss = nats / tokens.max(1) as f64;
        Self {
            loss,
            bits_per_byte: bits / bytes.max(1) as f64,
            bits_per_char: bits / chars.max(1) as f64,
            perplexity: loss.exp(),
            bytes_per_token: bytes as f64 / tokens.max(1) as f64,
            tokens,
            bytes,
            chars,
        }
    }
}

/// Scores the given windows of `tokens`: for each start s, inputs tokens[s..s+T] and
/// targets tokens[s+1..s+T+1]. Targets marked in `skip` (same layout, true = already
/// scored) are ignored. Runs without building a backward graph.
fn score_windows(
    model: &Gpt,
    tokenizer: &Tokenizer,
    tokens: &[u32],
    starts: &[usize],
    first_scored: &[usize],
    batch_size: usize,
    device: &Device,
) -> anyhow::Result<(f64, u64, u64, u64)> {
    // No graph and no parameter gradients: see `Gpt::frozen`.
    let model = &model.frozen();
    let t = model.config.block_size;
    let opts = CrossEntropyOptions {
        reduction: Reduction::None,
        ignore_index: Some(NOT_SCORED),
        ..Default::default()
    };
    let (mut nats, mut ntok, mut nbytes, mut nchars) = (0f64, 0u64, 0u64, 0u64);
    for (chunk, firsts) in starts
        .chunks(batch_size)
        .zip(first_scored.chunks(batch_size))
    {
        let mut inputs = Vec::with_capacity(chunk.len() * t);
        let mut targets = Vec::with_capacity(chunk.len() * t);
        for (&s, &first) in chunk.iter().zip(firsts) {
            inputs.extend_from_slice(&tokens[s..s + t]);
            for (j, &tok) in tokens[s + 1..s + t + 1].iter().enumerate() {
                if j >= first {
                    targets.push(tok);
                    let (b, c) = bytes_and_chars(tokenizer, &[tok]);
                    nbytes += b;
                    nchars += c;
                    ntok += 1;
                } else {
                    targets.push(NOT_SCORED);
                }
            }
        }
        let b = chunk.len();
        let x = Tensor::from_vec(inputs, (b, t), device)?;
        let y = Tensor::from_vec(targets, (b, t), device)?;
        let per_token = model.loss(&x, &y, &opts)?.detach(); // [N]
        nats += per_token
            .to_dtype(candle_core::DType::F64)?
            .sum_all()?
            .to_scalar::<f64>()?;
    }
    Ok((nats, ntok, nbytes, nchars))
}

/// Loss on fixed windows (the validation estimate during training).
pub fn evaluate_windows(
    model: &Gpt,
    tokenizer: &Tokenizer,
    tokens: &[u32],
    starts: &[usize],
    batch_size: usize,
    device: &Device,
) -> anyhow::Result<EvalReport> {
    let zeros = vec![0; starts.len()];
    let (n, t, b, c) = score_windows(model, tokenizer, tokens, starts, &zeros, batch_size, device)?;
    Ok(EvalReport::from_sum(n, t, b, c))
}

/// Loss over a whole token stream: every token after the first is scored exactly once,
/// in context-sized windows (stride T; the last window is aligned to the end and scores
/// only what the others did not).
pub fn evaluate_stream(
    model: &Gpt,
    tokenizer: &Tokenizer,
    tokens: &[u32],
    batch_size: usize,
    device: &Device,
) -> anyhow::Result<EvalReport> {
    let t = model.config.block_size;
    anyhow::ensure!(
        tokens.len() > t,
        "the text holds {} tokens; evaluation needs more than the context ({t})",
        tokens.len()
    );
    let mut starts = Vec::new();
    let mut firsts = Vec::new();
    let mut s = 0;
    while s + t < tokens.len() {
        starts.push(s);
        firsts.push(0);
        s += t;
    }
    // Targets scored so far: tokens[1..s+1). The tail window ends at the last token.
    if s + 1 < tokens.len() {
        let tail = tokens.len() - 1 - t;
        starts.push(tail);
        firsts.push(s - tail);
    }
    let (n, tk, b, c) = score_windows(
        model, tokenizer, tokens, &starts, &firsts, batch_size, device,
    )?;
    Ok(EvalReport::from_sum(n, tk, b, c))
}
