//! Text <-> token ids. Two tokenizers: raw bytes (vocab 256, lossless for any byte
//! string) and a byte-level BPE trained with the `tokenizers` crate (see `bpe`).
//! Both map every token to a byte string, so decoding is always to bytes and the
//! streaming UTF-8 decoder (`utf8`) turns those into printable text.

pub mod bpe;
pub mod stats;
pub mod utf8;

use std::path::Path;

/// A tokenizer that a run was trained with.
#[derive(Clone)]
pub enum Tokenizer {
    /// Token id = byte value.
    Bytes,
    /// A byte-level BPE loaded from a standard `tokenizer.json`.
    Bpe(bpe::BpeTokenizer),
}

impl Tokenizer {
    /// Number of distinct token ids (the model's V).
    pub fn vocab_size(&self) -> usize {
        match self {
            Tokenizer::Bytes => 256,
            Tokenizer::Bpe(b) => b.vocab_size(),
        }
    }

    /// A short, stable description stored in checkpoints: "bytes" or "bpe:<vocab>".
    pub fn describe(&self) -> String {
        match self {
            Tokenizer::Bytes => "bytes".to_string(),
            Tokenizer::Bpe(b) => format!("bpe:{}", b.vocab_size()),
        }
    }

    /// Resolves a tokenizer spec: `bytes`, or the path of a `tokenizer.json`, or of a
    /// directory holding one (such as a checkpoint directory).
    pub fn load(spec: &str) -> anyhow::Result<Self> {
        if spec == "bytes" {
            return Ok(Tokenizer::Bytes);
        }
        let path = Path::new(spec);
        let file = if path.is_dir() {
            path.join("tokenizer.json")
        } else {
            path.to_path_buf()
        };
        Ok(Tokenizer::Bpe(bpe::BpeTokenizer::load(&file)?))
    }

    /// Identifies the exact tokenizer, for checkpoints to refuse a different one:
    /// `bytes`, or `bpe:<vocab>:<hash of the tokenizer.json contents>` (two BPEs of the
    /// same size but different merges or pre-tokenizer differ here, not in `describe`).
    pub fn fingerprint(&self) -> String {
        match self {
            Tokenizer::Bytes => "bytes".to_string(),
            Tokenizer::Bpe(b) => format!("bpe:{}:{}", b.vocab_size(), b.fingerprint()),
        }
    }

    /// Encodes arbitrary bytes (any byte string is encodable by both tokenizers).
    pub fn encode(&self, bytes: &[u8]) -> anyhow::Result<Vec<u32>> {
        match self {
            Tokenizer::Bytes => Ok(bytes.iter().map(|&b| b as u32).collect()),
            Tokenizer::Bpe(b) => b.encode(bytes),
        }
    }

    /// The bytes of one token. Unknown ids give an empty slice.
    pub fn token_bytes(&self, id: u32) -> Vec<u8> {
        match self {
            Tokenizer::Bytes => {
                if id < 256 {
                    vec![id as u8]
                } else {
                    Vec::new()
                }
            }
            Tokenizer::Bpe(b) => b.token_bytes(id).to_vec(),
        }
    }

    /// Decodes ids to bytes (the concatenation of each token's bytes).
    pub fn decode(&self, ids: &[u32]) -> Vec<u8> {
        ids.iter().flat_map(|&id| self.token_bytes(id)).collect()
    }

    /// Saves the tokenizer as a file in `dir` (nothing for bytes); returns its path.
    pub fn save_to_dir(&self, dir: &Path) -> anyhow::Result<Option<std::path::PathBuf>> {
        match self {
            Tokenizer::Bytes => Ok(None),
            Tokenizer::Bpe(b) => {
                let p = dir.join("tokenizer.json");
                b.save(&p)?;
                Ok(Some(p))
            }
        }
    }
}

/// Checks, before any training, that a tokenizer can be saved at `out`: it names a file
/// (not a directory) in a directory that exists and takes new files, and an existing
/// regular file is replaced only with `force`, anything else never
/// ([`crate::data::check_out_file`]). Training a large corpus takes minutes: a path
/// that cannot be written must fail before them, not after.
pub fn check_out_path(out: &Path, force: bool) -> anyhow::Result<()> {
    let shown = out.display();
    anyhow::ensure!(
        !out.is_dir(),
        "--out {shown} is a directory: give a file path, e.g. {}",
        out.join("tokenizer.json").display()
    );
    anyhow::ensure!(out.file_name().is_some(), "--out {shown:?} names no file");
    let dir = crate::data::dir_of(out);
    anyhow::ensure!(
        dir.is_dir(),
        "cannot write {shown}: {} is not a directory{}",
        dir.display(),
        if dir.exists() {
            ""
        } else {
            " (it does not exist)"
        }
    );
    crate::data::check_out_file(out, force, "tokenizer train")?;
    // The save writes a temporary file beside `out` and renames it: that directory must
    // take new files (not read-only, not someone else's).
    let probe = dir.join(format!(
        ".{}.probe-{}",
        out.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id()
    ));
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
        .map_err(|e| anyhow::anyhow!("cannot write {shown}: {e}"))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn bytes_round_trip(b in proptest::collection::vec(any::<u8>(), 0..512)) {
            let t = Tokenizer::Bytes;
            let ids = t.encode(&b).unwrap();
            prop_assert_eq!(ids.len(), b.len());
            prop_assert!(ids.iter().all(|&i| (i as usize) < t.vocab_size()));
            prop_assert_eq!(t.decode(&ids), b);
        }
    }
}
