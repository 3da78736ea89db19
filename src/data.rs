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

/// The directory a file path lies in: its parent, or "." for a bare file name (whose
/// parent is "", which cannot be opened, listed or fsynced).
pub fn dir_of(path: &Path) -> &Path {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// Refuses, before any work, whatever is at a command's output file `out`: anything
/// without `force`; with it, all but a regular file (a directory, a symbolic link,
/// never followed, a FIFO, ...), so that no command replaces what it could not have
/// written. `cmd` names the command in the message.
pub fn check_out_file(out: &Path, force: bool, cmd: &str) -> anyhow::Result<()> {
    let kind = match std::fs::symlink_metadata(out) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => anyhow::bail!("cannot write {}: {e}", out.display()),
        Ok(m) if m.is_file() => None,
        Ok(m) if m.is_dir() => Some("a directory"),
        Ok(m) if m.is_symlink() => Some("a symbolic link"),
        Ok(_) => Some("not a regular file"),
    };
    match kind {
        None if force => Ok(()),
        None => Err(out_exists_error(out)),
        Some(k) => anyhow::bail!(
            "{} exists and is {k}: {cmd} replaces only a regular file, even with --force; \
             choose another --out",
            out.display()
        ),
    }
}

/// The refusal of an existing `out` without `--force`.
pub fn out_exists_error(out: &Path) -> anyhow::Error {
    anyhow::anyhow!(
        "{} exists: pass --force to replace it, or choose another --out",
        out.display()
    )
}

/// The corpus `tinylm train` reads when none is given (the sample shipped in `data/`).
pub const DEFAULT_CORPUS: &str = "data/zh_corpus.txt";

/// Bytes of memory a run needs per byte of its input text, at most: the text, its
/// train/validation copies, the token ids (4 bytes per token, at most one token per
/// byte) and the BPE trainer's working copy.
pub const MEMORY_PER_INPUT_BYTE: f64 = 16.0;

/// The largest input file any command reads: token positions and counts stay far
/// inside u32/usize arithmetic, and nobody's corpus of poems is larger.
pub const MAX_INPUT_BYTES: u64 = 4 << 30;

/// The most bytes an input file may hold on this machine now: [`MAX_INPUT_BYTES`], or
/// less when the available memory (/proc/meminfo) cannot hold its working copies.
pub fn input_limit() -> u64 {
    let by_memory = crate::train::memory::available_bytes()
        .map_or(u64::MAX, |m| (m / MEMORY_PER_INPUT_BYTE) as u64);
    MAX_INPUT_BYTES.min(by_memory)
}

/// Reads an input file of at most `limit` bytes, refusing a missing, unreadable or
/// larger one with a clear error before reading it (a regular file by its size; a
/// pipe or device such as /dev/zero after `limit` bytes).
pub fn read_input(path: &Path, what: &str, limit: u64) -> anyhow::Result<Vec<u8>> {
    use std::io::Read;
    let open_err = |e: std::io::Error| match e.kind() {
        std::io::ErrorKind::NotFound => anyhow::anyhow!("{what} {} not found", path.display()),
        _ => anyhow::anyhow!("cannot read {what} {}: {e}", path.display()),
    };
    let file = std::fs::File::open(path).map_err(open_err)?;
    let meta = file.metadata().map_err(open_err)?;
    anyhow::ensure!(!meta.is_dir(), "{what} {} is a directory", path.display());
    let too_large = |len: String| {
        anyhow::anyhow!(
            "{what} {} is {len} bytes; at most {limit} bytes can be read here (a limit set by \
             the memory available, {MEMORY_PER_INPUT_BYTE} bytes of memory per input byte, and \
             {MAX_INPUT_BYTES} at most)",
            path.display()
        )
    };
    if meta.is_file() && meta.len() > limit {
        return Err(too_large(meta.len().to_string()));
    }
    let mut bytes = Vec::new();
    file.take(limit.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(open_err)?;
    if bytes.len() as u64 > limit {
        return Err(too_large(format!("more than {limit}")));
    }
    Ok(bytes)
}

/// Reads a text file for training or evaluation (see [`read_input`]; limit
/// [`input_limit`]), refusing an empty one.
pub fn read_corpus(path: &Path) -> anyhow::Result<Vec<u8>> {
    let bytes = read_input(path, "corpus file", input_limit())?;
    anyhow::ensure!(
        !bytes.iter().all(|b| b.is_ascii_whitespace()),
        "corpus file {} is empty",
        path.display()
    );
    Ok(bytes)
}

/// Splits text into documents at blank lines (lines of nothing but spaces, tabs and a
/// carriage return, so CRLF text splits as LF text does); blank pieces are dropped.
/// Each document keeps its own line endings and its final line break.
pub fn split_documents(text: &[u8]) -> Vec<&[u8]> {
    let mut docs = Vec::new();
    let mut start = None; // start of the current document
    let mut pos = 0;
    for line in text.split_inclusive(|&b| b == b'\n') {
        let blank = line
            .iter()
            .all(|&b| matches!(b, b' ' | b'\t' | b'\r' | b'\n'));
        match (blank, start) {
            (true, Some(s)) => {
                docs.push(&text[s..pos]);
                start = None;
            }
            (false, None) => start = Some(pos),
            _ => {}
        }
        pos += line.len();
    }
    if let Some(s) = start {
        docs.push(&text[s..]);
    }
    docs
}

/// Where to cut a one-document text so that a fraction `keep` stays in front: at the
/// last line break before that point if there is one, else at a UTF-8 character
/// boundary (never inside a character, so valid UTF-8 stays valid on both sides).
fn cut_point(d: &[u8], keep: f64) -> usize {
    let at = ((d.len() as f64) * keep) as usize;
    let at = at.clamp(1, d.len().saturating_sub(1).max(1));
    if let Some(nl) = d[..at].iter().rposition(|&b| b == b'\n') {
        if nl + 1 < d.len() && nl > 0 {
            return nl + 1;
        }
    }
    let mut cut = at;
    while cut > 0 && cut < d.len() && d[cut] & 0xC0 == 0x80 {
        cut -= 1;
    }
    cut
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
        let cut = cut_point(d, 1.0 - val_fraction);
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
    // Documents are joined by a blank line in the text's own line ending.
    let crlf = docs[0].ends_with(b"\r\n");
    let join = |want: bool| -> Vec<u8> {
        let mut out = Vec::new();
        for (d, &v) in docs.iter().zip(&is_val) {
            if v == want {
                out.extend_from_slice(d);
                if !d.ends_with(b"\n") {
                    out.extend_from_slice(if crlf { b"\r\n" } else { b"\n" });
                }
                out.extend_from_slice(if crlf { b"\r\n" } else { b"\n" });
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
        Self::tokenize(&split_text(text, val_fraction, seed)?, tokenizer, context)
    }

    /// Tokenizes an already split text.
    pub fn tokenize(
        split: &SplitText,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crlf_text_splits_into_the_same_documents_as_lf_text() {
        let lf =
            "春晓\n孟浩然\n春眠不觉晓，处处闻啼鸟。\n\n静夜思\n李白\n床前明月光，疑是地上霜。\n";
        let crlf = lf.replace('\n', "\r\n");
        let (a, b) = (
            split_documents(lf.as_bytes()),
            split_documents(crlf.as_bytes()),
        );
        assert_eq!(a.len(), 2);
        assert_eq!(b.len(), 2);
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(
                String::from_utf8_lossy(x).replace('\n', "\r\n"),
                String::from_utf8_lossy(y)
            );
        }
        // Blank lines of spaces, tabs or a lone CR separate documents too.
        assert_eq!(split_documents(b"a\n \t\r\nb\n\r\n\r\nc").len(), 3);
        let s = split_text(crlf.as_bytes(), 0.5, 1).unwrap();
        assert_eq!((s.train_docs, s.val_docs), (1, 1));
        assert!(std::str::from_utf8(&s.train).is_ok() && std::str::from_utf8(&s.val).is_ok());
    }

    #[test]
    fn a_one_document_text_is_cut_at_a_line_or_character_boundary() {
        // One long line of 3-byte characters: the cut must not split one.
        let one = "床前明月光疑是地上霜".repeat(50);
        for f in [0.01, 0.1, 0.333, 0.5, 0.9, 0.99] {
            let s = split_text(one.as_bytes(), f, 7).unwrap();
            assert!(std::str::from_utf8(&s.train).is_ok(), "{f}");
            assert!(std::str::from_utf8(&s.val).is_ok(), "{f}");
            assert!(!s.train.is_empty() && !s.val.is_empty(), "{f}");
            assert_eq!(s.train.len() + s.val.len(), one.len());
        }
        // With line breaks, at the last one before the fraction.
        let lines = "一二三四五\n".repeat(10);
        let s = split_text(lines.as_bytes(), 0.25, 7).unwrap();
        assert!(s.train.ends_with(b"\n") && s.val.starts_with("一".as_bytes()));
    }

    #[test]
    fn inputs_larger_than_the_limit_are_refused_unread() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("big.txt");
        std::fs::write(&p, vec![b'a'; 1000]).unwrap();
        assert_eq!(read_input(&p, "text", 1000).unwrap().len(), 1000);
        let e = read_input(&p, "text", 999).unwrap_err().to_string();
        assert!(e.contains("is 1000 bytes; at most 999"), "{e}");
        // A device that never ends: refused after the limit, not read until memory runs out.
        let e = read_input(Path::new("/dev/zero"), "text", 1 << 20)
            .unwrap_err()
            .to_string();
        assert!(e.contains("more than 1048576"), "{e}");
        let e = read_input(dir.path(), "text", 10).unwrap_err().to_string();
        assert!(e.contains("is a directory"), "{e}");
    }
}
