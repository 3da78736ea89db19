//! Byte-level BPE through the `tokenizers` crate.
//!
//! Training seeds the vocabulary with all 256 byte symbols, so every byte string is
//! encodable, and saves a standard `tokenizer.json` (model BPE, pre-tokenizer
//! `Sequence[Split(regex), ByteLevel]`, decoder ByteLevel) that the Python
//! `tokenizers` package loads unchanged and encodes to the same ids.
//!
//! Pre-tokenization (`split_pattern`): the stock GPT-2 regex treats a run of Han
//! characters as one word (Han is `\p{L}`), so a whole clause or paragraph becomes one
//! pre-token; the trainer then holds every distinct clause with per-symbol pair
//! bookkeeping, which is slow and memory-hungry. Here a run of Han characters is cut
//! into pieces of at most `han_piece` characters, left to right (1 = each character
//! alone). Other scripts follow GPT-2 (letters with an optional leading space,
//! digits in groups of at most three), punctuation runs keep the line breaks that
//! follow them (`。\n` becomes one pre-token, hence possibly one token), and every
//! pre-token ends at a line break that is followed by a non-space, which lets long
//! inputs be encoded in independent chunks (see `encode`).
//!
//! `han_piece` is 1 by default: a token never holds two characters, so a model can
//! count the characters of a line. Pairs compress better (two-character words such
//! as 明月 become one token) but the model then writes fragments; longer pieces cost
//! memory and training time for little (BENCHMARKS.md, "Verse" and "Measurements
//! behind the code").
//!
//! Encoding arbitrary bytes: `tokenizers` takes `&str`, so the input is split into
//! maximal valid UTF-8 runs, encoded normally, and invalid bytes, which get their
//! single-byte tokens. Decoding never goes through `tokenizers`: every id maps to its
//! exact bytes (the ByteLevel byte-to-character map inverted once at load).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{anyhow, bail, Context};
use rayon::prelude::*;
use tokenizers::decoders::DecoderWrapper;
use tokenizers::models::bpe::{BpeTrainer, BPE};
use tokenizers::models::{ModelWrapper, TrainerWrapper};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::utils::SysRegex;
use tokenizers::{
    Model, OffsetReferential, OffsetType, PreTokenizedString, PreTokenizer, SplitDelimiterBehavior,
};

/// Default maximum number of Han characters per pre-token: one, so that a token never
/// holds two characters and a model can count a line (pairs compress better, but the
/// model then writes fragments: BENCHMARKS.md, "Verse").
pub const DEFAULT_HAN_PIECE: usize = 1;

/// Inputs longer than this are cut at safe line breaks and encoded in parallel.
const CHUNK_BYTES: usize = 1 << 16;

/// The pre-tokenizer regex (Oniguruma syntax, as used by both the Rust and the Python
/// `tokenizers`). `han_piece` = maximum Han characters per pre-token (>= 1).
pub fn split_pattern(han_piece: usize) -> String {
    let han_piece = han_piece.max(1);
    [
        // Han: short pieces, never a whole run.
        format!(r"\p{{Han}}{{1,{han_piece}}}"),
        // English contractions, as GPT-2.
        r"'(?:[sdmt]|ll|ve|re)".to_string(),
        // Letters of other scripts, with an optional leading space; at most 32, so
        // that a degenerate run (one letter repeated) is many short pre-tokens rather
        // than one the trainer's pair counting is quadratic in.
        r" ?[\p{L}&&[^\p{Han}]]{1,32}".to_string(),
        // Digits, at most three together.
        r" ?\p{N}{1,3}".to_string(),
        // Punctuation and symbols, with the line breaks that follow them (bounded, as
        // letters are).
        r" ?[^\s\p{L}\p{N}]{1,32}[\r\n]{0,4}".to_string(),
        // Whitespace ending in a line break; then other whitespace as GPT-2.
        r"\s{0,31}[\r\n]".to_string(),
        r"\s{1,32}(?!\S)".to_string(),
        r"\s{1,32}".to_string(),
    ]
    .join("|")
}

/// Options for `train_bpe`.
#[derive(Debug, Clone)]
pub struct BpeTrainOptions {
    /// Total vocabulary size, the 256 byte tokens included (>= 256).
    pub vocab_size: usize,
    /// Maximum Han characters per pre-token (1 = each character alone).
    pub han_piece: usize,
    /// Print phases and timings to stderr.
    pub progress: bool,
}

impl BpeTrainOptions {
    pub fn new(vocab_size: usize) -> Self {
        Self {
            vocab_size,
            han_piece: DEFAULT_HAN_PIECE,
            progress: false,
        }
    }
}

/// Trains a byte-level BPE on the concatenated contents of `files`.
///
/// Files are read whole (the corpus must fit in memory); bytes that are not valid
/// UTF-8 are skipped for training (they still encode, as single-byte tokens).
pub fn train_bpe(files: &[PathBuf], opts: &BpeTrainOptions) -> anyhow::Result<BpeTokenizer> {
    if files.is_empty() {
        bail!("no training files given");
    }
    let mut text = String::new();
    for f in files {
        let bytes = std::fs::read(f).with_context(|| format!("reading {}", f.display()))?;
        for chunk in bytes.utf8_chunks() {
            text.push_str(chunk.valid());
        }
        // Files are separate documents: never let a pre-token span two of them.
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
    }
    if opts.progress {
        eprintln!(
            "bpe: read {} bytes from {} file(s)",
            text.len(),
            files.len()
        );
    }
    train_bpe_from_text(&text, opts)
}

/// Trains a byte-level BPE on `text`.
pub fn train_bpe_from_text(text: &str, opts: &BpeTrainOptions) -> anyhow::Result<BpeTokenizer> {
    if opts.vocab_size < 256 {
        bail!(
            "vocabulary size {} is too small: a byte-level BPE needs at least the 256 byte tokens",
            opts.vocab_size
        );
    }
    if opts.vocab_size > u32::MAX as usize {
        bail!(
            "vocabulary size {} does not fit token ids (u32)",
            opts.vocab_size
        );
    }
    if opts.han_piece == 0 {
        bail!("han_piece must be at least 1");
    }
    let t0 = Instant::now();
    let mut tk = tokenizers::Tokenizer::new(BPE::default());
    tk.with_pre_tokenizer(Some(pre_tokenizer(opts.han_piece)?));
    tk.with_decoder(Some(DecoderWrapper::ByteLevel(ByteLevel::new(
        false, true, false,
    ))));
    let alphabet: HashSet<char> = ByteLevel::alphabet().into_iter().collect();
    let mut trainer: TrainerWrapper = BpeTrainer::builder()
        .vocab_size(opts.vocab_size)
        .min_frequency(0)
        .initial_alphabet(alphabet)
        .show_progress(false)
        .build()
        .into();
    // Sequences are cut at safe line breaks, so the pre-tokens are the same as for
    // the whole text; fewer, larger sequences keep the trainer's per-sequence
    // overhead low.
    let chunks = safe_chunks(text, CHUNK_BYTES);
    quiet_catch("BPE training", || {
        tk.train(&mut trainer, chunks.into_iter())
            .map(|_| ())
            .map_err(|e| anyhow!("BPE training failed: {e}"))
    })?;
    let tok = BpeTokenizer::from_inner(tk)?;
    // The trainer stops early, without a word, when no pair is left to merge: say so,
    // since the model's V and the run's tokenizer name change with it.
    if tok.vocab_size() < opts.vocab_size {
        eprintln!(
            "note: the BPE has {} tokens, fewer than the {} asked: the text has no more \
             pairs to merge within its pre-tokens",
            tok.vocab_size(),
            opts.vocab_size
        );
    }
    if opts.progress {
        eprintln!(
            "bpe: trained vocabulary of {} tokens (asked {}) in {:.2} s",
            tok.vocab_size(),
            opts.vocab_size,
            t0.elapsed().as_secs_f64()
        );
    }
    Ok(tok)
}

fn pre_tokenizer(han_piece: usize) -> anyhow::Result<PreTokenizerWrapper> {
    let split = Split::new(
        SplitPattern::Regex(split_pattern(han_piece)),
        SplitDelimiterBehavior::Isolated,
        false,
    )
    .map_err(|e| anyhow!("bad pre-tokenizer regex: {e}"))?;
    Ok(PreTokenizerWrapper::Sequence(Sequence::new(vec![
        PreTokenizerWrapper::Split(split),
        PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, false)),
    ])))
}

thread_local! {
    /// Set while [`quiet_catch`] runs on this thread: its panics are turned into errors,
    /// so the default hook's "thread panicked at" report must not be printed.
    static QUIET: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f`, turning a panic inside it (in `tokenizers` or its regex engine, on hostile
/// input) into an error naming `what`, without the panic report on stderr.
fn quiet_catch<R>(what: &str, f: impl FnOnce() -> anyhow::Result<R>) -> anyhow::Result<R> {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !QUIET.with(|q| q.get()) {
                default(info)
            }
        }));
    });
    let was = QUIET.with(|q| q.replace(true));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    QUIET.with(|q| q.set(was));
    result.unwrap_or_else(|payload| {
        let msg = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("no message");
        Err(anyhow!(
            "{what} failed: {} (a hostile or broken tokenizer, e.g. a pre-tokenizer regex that backtracks without end)",
            msg.lines().next().unwrap_or("").trim()
        ))
    })
}

/// The GPT-2 byte-to-character map (printable bytes map to themselves, the others to
/// U+0100.. in byte order), as `tokenizers` uses it.
fn byte_to_char() -> [char; 256] {
    let mut map = ['\0'; 256];
    let mut n = 0u32;
    for b in 0..=255u8 {
        let printable = matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        map[b as usize] = if printable {
            b as char
        } else {
            let c = char::from_u32(256 + n).expect("U+0100..U+0143 are chars");
            n += 1;
            c
        };
    }
    map
}

/// Cuts `text` into pieces of roughly `target` bytes, only after a line break that has
/// a non-space character on both sides (the pre-tokenizer always splits there).
fn safe_chunks(text: &str, target: usize) -> Vec<&str> {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut start = 0;
    while start < bytes.len() {
        let mut cut = bytes.len();
        let mut i = start + target;
        while i < bytes.len() {
            if bytes[i - 1] == b'\n' && is_safe_cut(text, i) {
                cut = i;
                break;
            }
            i += 1;
        }
        out.push(&text[start..cut]);
        start = cut;
    }
    out
}

/// `i` follows a `\n`; is the cut at `i` one where every pre-token ends?
fn is_safe_cut(text: &str, i: usize) -> bool {
    let before = text[..i - 1].chars().next_back();
    let after = text[i..].chars().next();
    matches!((before, after), (Some(b), Some(a)) if clearly_not_space(b) && clearly_not_space(a))
}

/// Not whitespace under any regex engine's definition (Unicode White_Space plus the
/// format characters that some engines count as spaces).
fn clearly_not_space(c: char) -> bool {
    !c.is_whitespace()
        && !matches!(
            c,
            '\u{180E}' | '\u{200B}'..='\u{200D}' | '\u{2060}' | '\u{FEFF}'
        )
}

/// A byte-level BPE tokenizer plus the byte string of every token id.
#[derive(Clone)]
pub struct BpeTokenizer {
    inner: Arc<tokenizers::Tokenizer>,
    /// `token_bytes[id]` = the exact bytes of token `id`; ids are dense.
    token_bytes: Vec<Vec<u8>>,
    /// Id of the single-byte token of each byte value.
    byte_ids: Box<[u32; 256]>,
    /// Whether long inputs may be cut at safe line breaks (the pre-tokenizer was
    /// checked to split there and no added token spans a line break).
    chunked: bool,
    /// The Split regex when the pipeline is exactly ours (no normalizer, no added
    /// tokens, `Sequence[Split(regex, Isolated), ByteLevel(no regex)]`), so that
    /// `encode_direct` may replace the generic pipeline.
    fast_split: Option<Arc<SysRegex>>,
    byte_chars: Box<[char; 256]>,
    /// See `fingerprint`.
    fingerprint: String,
}

impl std::fmt::Debug for BpeTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BpeTokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("fingerprint", &self.fingerprint())
            .finish()
    }
}

impl BpeTokenizer {
    /// Loads a `tokenizer.json`. Anything that is not a lossless byte-level BPE is
    /// refused with an error saying why.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let bytes =
            std::fs::read(path).with_context(|| format!("reading tokenizer {}", path.display()))?;
        Self::from_json_bytes(&bytes)
            .with_context(|| format!("loading tokenizer {}", path.display()))
    }

    /// Parses the contents of a `tokenizer.json`.
    pub fn from_json_bytes(bytes: &[u8]) -> anyhow::Result<Self> {
        // The file is untrusted: a panic deep in a deserializer must not take the
        // program down.
        let tk = quiet_catch("parsing the tokenizer file", || {
            tokenizers::Tokenizer::from_bytes(bytes)
                .map_err(|e| anyhow!("not a valid tokenizer.json: {e}"))
        })?;
        quiet_catch("validating the tokenizer file", || Self::from_inner(tk))
    }

    /// Saves as a standard `tokenizer.json`.
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        let json = self.to_json()?;
        std::fs::write(path, json).with_context(|| format!("writing {}", path.display()))
    }

    /// The `tokenizer.json` text.
    pub fn to_json(&self) -> anyhow::Result<String> {
        self.inner
            .to_string(true)
            .map_err(|e| anyhow!("serializing tokenizer: {e}"))
    }

    pub fn vocab_size(&self) -> usize {
        self.token_bytes.len()
    }

    /// A stable 64-bit FNV-1a hash (16 hex digits) of the serialized tokenizer: two
    /// tokenizers with the same fingerprint encode every input to the same ids.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// Encodes any byte string, valid UTF-8 or not; `decode(encode(x)) == x`.
    pub fn encode(&self, bytes: &[u8]) -> anyhow::Result<Vec<u32>> {
        let mut out = Vec::with_capacity(bytes.len() / 2 + 1);
        for chunk in bytes.utf8_chunks() {
            self.encode_str_into(chunk.valid(), &mut out)?;
            out.extend(chunk.invalid().iter().map(|&b| self.byte_ids[b as usize]));
        }
        Ok(out)
    }

    /// Encodes valid UTF-8 text (same ids as `tokenizer.encode(text).ids` in Python).
    pub fn encode_str(&self, text: &str) -> anyhow::Result<Vec<u32>> {
        let mut out = Vec::new();
        self.encode_str_into(text, &mut out)?;
        Ok(out)
    }

    fn encode_str_into(&self, text: &str, out: &mut Vec<u32>) -> anyhow::Result<()> {
        if text.is_empty() {
            return Ok(());
        }
        if !self.chunked || text.len() <= CHUNK_BYTES {
            out.extend(self.encode_one(text)?);
            return Ok(());
        }
        let pieces: Vec<anyhow::Result<Vec<u32>>> = safe_chunks(text, CHUNK_BYTES)
            .into_par_iter()
            .map(|c| self.encode_one(c))
            .collect();
        for p in pieces {
            out.extend(p?);
        }
        Ok(())
    }

    fn encode_one(&self, text: &str) -> anyhow::Result<Vec<u32>> {
        // A tokenizer.json may carry any regex, and Oniguruma panics (rather than
        // erring) when one backtracks past its retry limit: that is bad input, not a bug.
        quiet_catch("encoding", || {
            match (&self.fast_split, self.inner.get_model()) {
                (Some(re), ModelWrapper::BPE(bpe)) => self.encode_direct(re, bpe, text),
                _ => self.encode_reference(text),
            }
        })
    }

    /// Whether `encode` takes the direct path (`encode_direct`) rather than the
    /// generic `tokenizers` pipeline; true for tokenizers that `train_bpe` made.
    pub fn encodes_directly(&self) -> bool {
        self.fast_split.is_some()
    }

    /// One call of the `tokenizers` pipeline over the whole text: the definition of
    /// the ids (what Python's `tokenizer.encode(text).ids` gives).
    pub fn encode_reference(&self, text: &str) -> anyhow::Result<Vec<u32>> {
        let enc = self
            .inner
            .encode_fast(text, false)
            .map_err(|e| anyhow!("BPE encoding failed: {e}"))?;
        Ok(enc.get_ids().to_vec())
    }

    /// The pipeline of `Sequence[Split(regex, Isolated), ByteLevel(no regex)]` + BPE
    /// without its per-byte offset bookkeeping and per-token strings: the same regex
    /// engine cuts the text (matches and the gaps between them are pre-tokens), each
    /// pre-token is mapped to byte-level characters and given to the BPE model: the
    /// same ids as `encode_reference` (the tests check), without its bookkeeping.
    fn encode_direct(&self, re: &SysRegex, bpe: &BPE, text: &str) -> anyhow::Result<Vec<u32>> {
        let mut out = Vec::with_capacity(text.len() / 2 + 1);
        // Pre-tokens repeat a lot (characters, punctuation, line ends); a local cache
        // avoids the model's locked cache and its per-token string copies.
        let mut cache: std::collections::HashMap<&str, Vec<u32>> = Default::default();
        let mut buf = String::new();
        let mut piece = |a: usize, b: usize, out: &mut Vec<u32>| -> anyhow::Result<()> {
            let p = &text[a..b];
            if let Some(ids) = cache.get(p) {
                out.extend_from_slice(ids);
                return Ok(());
            }
            buf.clear();
            buf.extend(p.bytes().map(|b| self.byte_chars[b as usize]));
            let ids: Vec<u32> = bpe
                .tokenize(&buf)
                .map_err(|e| anyhow!("BPE encoding failed: {e}"))?
                .iter()
                .map(|t| t.id)
                .collect();
            out.extend_from_slice(&ids);
            cache.insert(p, ids);
            Ok(())
        };
        let mut prev = 0;
        for (start, end) in re.find_iter(text) {
            if start > prev {
                piece(prev, start, &mut out)?;
            }
            if end > start {
                piece(start, end, &mut out)?;
            }
            prev = end;
        }
        if prev < text.len() {
            piece(prev, text.len(), &mut out)?;
        }
        Ok(out)
    }

    /// The exact bytes of token `id` (empty for an unknown id).
    pub fn token_bytes(&self, id: u32) -> &[u8] {
        self.token_bytes
            .get(id as usize)
            .map(|v| v.as_slice())
            .unwrap_or(&[])
    }

    /// Decodes ids to bytes (unknown ids contribute nothing).
    pub fn decode(&self, ids: &[u32]) -> Vec<u8> {
        ids.iter()
            .flat_map(|&id| self.token_bytes(id).iter().copied())
            .collect()
    }

    /// The underlying `tokenizers` tokenizer.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    /// Validates a parsed tokenizer and builds the id -> bytes table.
    fn from_inner(mut tk: tokenizers::Tokenizer) -> anyhow::Result<Self> {
        let model_name = match tk.get_model() {
            ModelWrapper::BPE(_) => None,
            ModelWrapper::WordPiece(_) => Some("WordPiece"),
            ModelWrapper::WordLevel(_) => Some("WordLevel"),
            ModelWrapper::Unigram(_) => Some("Unigram"),
        };
        if let Some(name) = model_name {
            bail!("the tokenizer's model is {name}; tinylm needs a byte-level BPE");
        }
        if let ModelWrapper::BPE(bpe) = tk.get_model() {
            if bpe.dropout.is_some_and(|p| p > 0.0) {
                bail!("the BPE model has dropout, which makes encoding random");
            }
            if bpe.continuing_subword_prefix.is_some() || bpe.end_of_word_suffix.is_some() {
                bail!("the BPE model marks subwords with a prefix/suffix, which byte-level BPE does not use");
            }
        }
        if tk.get_normalizer().is_some() {
            bail!("the tokenizer has a normalizer, which would change the text (tinylm needs encode then decode to give back the input)");
        }
        match tk.get_pre_tokenizer() {
            Some(pt) if has_byte_level(pt)? => {}
            _ => bail!("the tokenizer's pre-tokenizer has no ByteLevel step: not a byte-level BPE"),
        }
        // Truncation and padding would drop or add ids.
        tk.with_truncation(None)
            .map_err(|e| anyhow!("disabling truncation: {e}"))?;
        tk.with_padding(None);

        let vocab = tk.get_vocab(true);
        let size = vocab.values().map(|&id| id as usize + 1).max().unwrap_or(0);
        if size != vocab.len() {
            bail!(
                "token ids are not dense: {} tokens but ids up to {}",
                vocab.len(),
                size.saturating_sub(1)
            );
        }
        let added = tk.get_added_tokens_decoder();
        for t in added.values() {
            if t.lstrip || t.rstrip {
                bail!(
                    "added token {:?} strips whitespace, which loses text",
                    t.content
                );
            }
        }
        let mut char_to_byte = std::collections::HashMap::with_capacity(256);
        for (b, c) in byte_to_char().iter().enumerate() {
            char_to_byte.insert(*c, b as u8);
        }
        let mut token_bytes = vec![Vec::new(); size];
        let mut seen = vec![false; size];
        for (s, &id) in &vocab {
            let id = id as usize;
            if std::mem::replace(&mut seen[id], true) {
                bail!("token id {id} is given to two different tokens");
            }
            token_bytes[id] = if let Some(t) = added.get(&(id as u32)) {
                // Added tokens are matched in the raw text, so they stand for their
                // content as written.
                t.content.as_bytes().to_vec()
            } else {
                s.chars()
                    .map(|c| {
                        char_to_byte.get(&c).copied().ok_or_else(|| {
                            anyhow!("token {id} ({s:?}) has a character outside the byte-level alphabet")
                        })
                    })
                    .collect::<anyhow::Result<Vec<u8>>>()?
            };
            if token_bytes[id].is_empty() {
                bail!("token {id} is empty");
            }
        }
        if let Some(id) = seen.iter().position(|&s| !s) {
            bail!("token id {id} has no token");
        }
        let mut byte_ids = Box::new([0u32; 256]);
        for (b, c) in byte_to_char().iter().enumerate() {
            let id = tk.token_to_id(&c.to_string()).ok_or_else(|| {
                anyhow!("the vocabulary lacks the single-byte token for byte 0x{b:02x}: not every input could be encoded")
            })?;
            if token_bytes[id as usize] != [b as u8] {
                bail!("the single-byte token for byte 0x{b:02x} is shadowed by an added token");
            }
            byte_ids[b] = id;
        }
        let chunked = !added.values().any(|t| t.content.contains('\n'))
            && splits_at_safe_line_breaks(tk.get_pre_tokenizer().expect("checked above"))?;
        let json = tk
            .to_string(false)
            .map_err(|e| anyhow!("serializing tokenizer: {e}"))?;
        let fingerprint = fnv1a64(json.as_bytes());
        let fast_split = if added.is_empty() {
            direct_split_regex(tk.get_pre_tokenizer().expect("checked above"))?
        } else {
            None
        };
        let tok = Self {
            fast_split,
            byte_chars: Box::new(byte_to_char()),
            fingerprint,
            inner: Arc::new(tk),
            token_bytes,
            byte_ids,
            chunked,
        };
        tok.check_round_trip()?;
        Ok(tok)
    }

    /// Encodes a probe text with every kind of character and checks that decoding
    /// gives it back (catches add_prefix_space, lossy post-processing and the like).
    fn check_round_trip(&self) -> anyhow::Result<()> {
        let probe = "Hello, world! It's 2024.\n  tabs\tand  spaces \n\n\
                     春眠不觉晓，处处闻啼鸟。\n「夜来」风雨声……花落知多少？\r\n\
                     Ünïcödé ελληνικά русский 日本語のテキスト 한국어 🎉👍🏽 \u{0}\u{7f}\u{200b}\u{3000}x";
        let ids = self.encode(probe.as_bytes())?;
        if self.decode(&ids) != probe.as_bytes() {
            bail!(
                "encoding then decoding does not give back the text: the tokenizer is not lossless"
            );
        }
        Ok(())
    }
}

/// FNV-1a, 64 bits, as 16 hex digits: stable across Rust versions and platforms
/// (unlike `DefaultHasher`).
fn fnv1a64(bytes: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// The compiled regex when the pre-tokenizer is `Sequence[Split(regex, Isolated, not
/// inverted), ByteLevel(no prefix space, no regex)]`, the shape `train_bpe` writes.
fn direct_split_regex(pt: &PreTokenizerWrapper) -> anyhow::Result<Option<Arc<SysRegex>>> {
    let PreTokenizerWrapper::Sequence(seq) = pt else {
        return Ok(None);
    };
    let [PreTokenizerWrapper::Split(split), PreTokenizerWrapper::ByteLevel(bl)] =
        AsRef::<[PreTokenizerWrapper]>::as_ref(seq)
    else {
        return Ok(None);
    };
    let (SplitPattern::Regex(pattern), SplitDelimiterBehavior::Isolated, false, false, false) = (
        &split.pattern,
        split.behavior,
        split.invert,
        bl.add_prefix_space,
        bl.use_regex,
    ) else {
        return Ok(None);
    };
    let re = SysRegex::new(pattern).map_err(|e| anyhow!("bad pre-tokenizer regex: {e}"))?;
    Ok(Some(Arc::new(re)))
}

/// Whether the pre-tokenizer contains a ByteLevel step (which must not add a space).
fn has_byte_level(pt: &PreTokenizerWrapper) -> anyhow::Result<bool> {
    Ok(match pt {
        PreTokenizerWrapper::ByteLevel(b) => {
            if b.add_prefix_space {
                bail!("the ByteLevel pre-tokenizer adds a prefix space, which changes the text");
            }
            true
        }
        PreTokenizerWrapper::Sequence(seq) => {
            let mut found = false;
            for p in AsRef::<[PreTokenizerWrapper]>::as_ref(seq) {
                found |= has_byte_level(p)?;
            }
            found
        }
        _ => false,
    })
}

/// Checks on a probe that the pre-tokenizer ends a pre-token at every line break with
/// non-space characters on both sides, so that cutting there changes no ids.
fn splits_at_safe_line_breaks(pt: &PreTokenizerWrapper) -> anyhow::Result<bool> {
    let probe = "a\nb。\n春秋\n冬\nx y\n1\n,\n'\n中文\n\u{1F600}\nz";
    let mut pts = PreTokenizedString::from(probe);
    pt.pre_tokenize(&mut pts)
        .map_err(|e| anyhow!("pre-tokenizer failed on a probe: {e}"))?;
    let ends: HashSet<usize> = pts
        .get_splits(OffsetReferential::Original, OffsetType::Byte)
        .iter()
        .map(|(_, (_, end), _)| *end)
        .collect();
    Ok(probe
        .match_indices('\n')
        .map(|(i, _)| i + 1)
        .filter(|&i| is_safe_cut(probe, i))
        .all(|i| ends.contains(&i)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a64_matches_published_vectors() {
        // Test vectors from the FNV reference (draft-eastlake-fnv): "" and "a".
        assert_eq!(fnv1a64(b""), "cbf29ce484222325");
        assert_eq!(fnv1a64(b"a"), "af63dc4c8601ec8c");
    }

    #[test]
    fn byte_map_is_a_bijection_onto_the_crate_alphabet() {
        let ours: HashSet<char> = byte_to_char().into_iter().collect();
        let theirs: HashSet<char> = ByteLevel::alphabet().into_iter().collect();
        assert_eq!(ours.len(), 256);
        assert_eq!(ours, theirs);
        assert_eq!(byte_to_char()[b' ' as usize], '\u{120}'); // GPT-2's 'Ġ'
        assert_eq!(byte_to_char()[b'\n' as usize], '\u{10A}'); // GPT-2's 'Ċ'
    }

    #[test]
    fn safe_chunks_cover_the_text_and_cut_only_at_safe_breaks() {
        let text = "ab\ncd\n\nef \ngh\n春\n秋\n";
        for target in 1..8 {
            let chunks = safe_chunks(text, target);
            assert_eq!(chunks.concat(), text);
            let mut pos = 0;
            for c in &chunks[..chunks.len() - 1] {
                pos += c.len();
                assert!(is_safe_cut(text, pos), "cut at {pos} with target {target}");
            }
        }
    }

    #[test]
    fn han_runs_are_cut_into_short_pieces() {
        let pt = pre_tokenizer(2).unwrap();
        let text = "春眠不觉晓，处处闻啼鸟。\nHello world";
        let mut pts = PreTokenizedString::from(text);
        pt.pre_tokenize(&mut pts).unwrap();
        let pieces: Vec<&str> = pts
            .get_splits(OffsetReferential::Original, OffsetType::Byte)
            .iter()
            .map(|(_, (s, e), _)| &text[*s..*e])
            .collect();
        println!("pieces: {pieces:?}");
        assert_eq!(
            pieces,
            [
                "春眠", "不觉", "晓", "，", "处处", "闻啼", "鸟", "。\n", "Hello", " world"
            ]
        );
    }
}
