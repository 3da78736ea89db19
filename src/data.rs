//! Corpus loading, the train/validation split and the seeded window sampler.
//!
//! The corpus is split at poem boundaries (blank lines), so no poem is cut between
//! train and validation; which poems go to validation is a deterministic function of the
//! seed. Training batches are random windows of T+1 tokens drawn by a ChaCha RNG whose
//! position is saved in checkpoints, so a resumed run draws exactly the batches an
//! uninterrupted run would have.

use crate::tokenizer::Tokenizer;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Token ids of the training and validation halves.
pub struct Corpus {
    pub train: Vec<u32>,
    pub val: Vec<u32>,
    /// Poems (blank-line separated documents) in each half.
    pub train_docs: usize,
    pub val_docs: usize,
}

/// Reads a UTF-8 (or any) text file, refusing a missing or empty one with a clear error.
pub fn read_corpus(path: &Path) -> anyhow::Result<Vec<u8>> {
    let bytes = std::fs::read(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => anyhow::anyhow!("corpus file {} not found", path.display()),
        _ => anyhow::anyhow!("cannot read corpus file {}: {e}", path.display()),
    })?;
    anyhow::ensure!(
        !bytes.iter().all(|b| b.is_ascii_whitespace()),
        "corpus file {} is empty",
        path.display()
    );
    Ok(bytes)
}

/// Splits text into documents at blank lines ("\n\n"); empty pieces are dropped.
pub fn split_documents(text: &[u8]) -> Vec<&[u8]> {
    let mut docs = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i + 1 < text.len() {
        if text[i] == b'\n' && text[i + 1] == b'\n' {
            docs.push(&text[start..i + 1]);
            i += 2;
            while i < text.len() && text[i] == b'\n' {
                i += 1;
            }
            start = i;
        } else {
            i += 1;
        }
    }
    if start < text.len() {
        docs.push(&text[start..]);
    }
    docs.retain(|d| !d.iter().all(|b| b.is_ascii_whitespace()));
    docs
}

/// The raw text of the two halves of a split (see [`Corpus::split`]).
pub struct SplitText {
    pub train: Vec<u8>,
    pub val: Vec<u8>,
    pub train_docs: usize,
    pub val_docs: usize,
}

/// Splits `text` into train and validation at document boundaries: a fraction
/// `val_fraction` of the documents (at least one), chosen by `seed`, goes to validation.
/// Each half is the concatenation of its documents, separated by a blank line as in the
/// source. A one-document text is cut inside the document instead.
pub fn split_text(text: &[u8], val_fraction: f64, seed: u64) -> anyhow::Result<SplitText> {
    let docs = split_documents(text);
    anyhow::ensure!(!docs.is_empty(), "the corpus holds no text");
    let mut order: Vec<usize> = (0..docs.len()).collect();
    order.shuffle(&mut ChaCha8Rng::seed_from_u64(seed ^ 0x5eed_da7a));
    let n_val = ((docs.len() as f64 * val_fraction).round() as usize).clamp(1, docs.len());
    if docs.len() == 1 {
        let d = docs[0];
        let cut = ((d.len() as f64) * (1.0 - val_fraction)) as usize;
        return Ok(SplitText {
            train: d[..cut].to_vec(),
            val: d[cut..].to_vec(),
            train_docs: 1,
            val_docs: 1,
        });
    }
    let n_val = n_val.min(docs.len() - 1);
    let mut is_val = vec![false; docs.len()];
    for &i in &order[..n_val] {
        is_val[i] = true;
    }
    let join = |want: bool| -> Vec<u8> {
        let mut out = Vec::new();
        for (d, &v) in docs.iter().zip(&is_val) {
            if v == want {
                out.extend_from_slice(d);
                out.push(b'\n');
            }
        }
        out
    };
    Ok(SplitText {
        train: join(false),
        val: join(true),
        train_docs: docs.len() - n_val,
        val_docs: n_val,
    })
}

impl Corpus {
    /// Splits `text` (see [`split_text`]) and tokenizes both halves. Both must hold
    /// more than `context + 1` tokens.
    pub fn split(
        text: &[u8],
        tokenizer: &Tokenizer,
        val_fraction: f64,
        seed: u64,
        context: usize,
    ) -> anyhow::Result<Self> {
        Self::tokenize(split_text(text, val_fraction, seed)?, tokenizer, context)
    }

    /// Tokenizes an already split text.
    pub fn tokenize(
        split: SplitText,
        tokenizer: &Tokenizer,
        context: usize,
    ) -> anyhow::Result<Self> {
        let train = tokenizer.encode(&split.train)?;
        let val = tokenizer.encode(&split.val)?;
        for (name, toks) in [("training", &train), ("validation", &val)] {
            anyhow::ensure!(
                toks.len() > context + 1,
                "the corpus is too short for a context of {context}: its {name} part holds {} tokens, \
                 need more than {} (use a longer corpus or a smaller --context)",
                toks.len(),
                context + 1
            );
        }
        Ok(Self {
            train,
            val,
            train_docs: split.train_docs,
            val_docs: split.val_docs,
        })
    }
}

/// Where the window sampler's RNG stands: enough to continue the same stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SamplerState {
    pub seed: u64,
    /// ChaCha word position, as a decimal string in JSON (it is a u128).
    #[serde(with = "u128_string")]
    pub word_pos: u128,
}

mod u128_string {
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(v: &u128, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&v.to_string())
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u128, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Draws random windows of T+1 consecutive tokens.
pub struct WindowSampler {
    seed: u64,
    rng: ChaCha8Rng,
}

/// One batch: inputs and next-token targets, each B·T ids in row-major [B, T] order.
pub struct Batch {
    pub inputs: Vec<u32>,
    pub targets: Vec<u32>,
    pub batch_size: usize,
    pub context: usize,
}

impl WindowSampler {
    pub fn new(seed: u64) -> Self {
        Self {
            seed,
            rng: ChaCha8Rng::seed_from_u64(seed),
        }
    }

    pub fn from_state(s: SamplerState) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(s.seed);
        rng.set_word_pos(s.word_pos);
        Self { seed: s.seed, rng }
    }

    pub fn state(&self) -> SamplerState {
        SamplerState {
            seed: self.seed,
            word_pos: self.rng.get_word_pos(),
        }
    }

    /// B random windows of `tokens`, each T inputs and the T targets shifted by one.
    pub fn next_batch(&mut self, tokens: &[u32], batch_size: usize, context: usize) -> Batch {
        assert!(
            tokens.len() > context + 1,
            "corpus shorter than the context"
        );
        let mut inputs = Vec::with_capacity(batch_size * context);
        let mut targets = Vec::with_capacity(batch_size * context);
        for _ in 0..batch_size {
            let start = self.rng.gen_range(0..tokens.len() - context);
            inputs.extend_from_slice(&tokens[start..start + context]);
            targets.extend_from_slice(&tokens[start + 1..start + context + 1]);
        }
        Batch {
            inputs,
            targets,
            batch_size,
            context,
        }
    }
}

/// The fixed evaluation windows: `count` windows spread evenly over `tokens`, the same
/// at every evaluation so that validation losses are comparable step to step.
pub fn eval_windows(tokens: &[u32], count: usize, context: usize) -> Vec<usize> {
    let span = tokens.len() - context - 1;
    (0..count).map(|i| i * span / count.max(1)).collect()
}

/// Bytes and characters that a run of target tokens stands for: the denominators of
/// bits per byte and bits per character (a character is a UTF-8 lead byte).
pub fn bytes_and_chars(tokenizer: &Tokenizer, ids: &[u32]) -> (u64, u64) {
    let mut bytes = 0u64;
    let mut chars = 0u64;
    for &id in ids {
        for b in tokenizer.token_bytes(id) {
            bytes += 1;
            chars += (b & 0xC0 != 0x80) as u64;
        }
    }
    (bytes, chars)
}
