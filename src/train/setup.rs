//! Setting a training run up before its first step: which directory, which config (a
//! preset, a file and flags for a new run; the checkpoint's own for a resumed one, with
//! the few flags a resume takes), the corpus, the tokenizer and the memory check.
//!
//! Every check that can fail runs before anything is written, and nothing is ever
//! written into a directory that is not a run's own: a new run needs a new or empty
//! directory, a resume needs a run directory (see `checkpoint::is_run_dir`).

use super::checkpoint::CorpusRecord;
use super::checkpoint::{self, Loaded, RunLock};
use super::config::TrainConfig;
use super::memory::{self, MemoryEstimate, StepKind};
use crate::data::{read_corpus, split_text, Corpus, DEFAULT_CORPUS};
use crate::tokenizer::{bpe, Tokenizer};
use anyhow::Context;
use candle_core::Device;
use std::path::{Path, PathBuf};

/// Values given on the command line for config fields (None: not given).
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub max_steps: Option<usize>,
    pub time_budget_s: Option<f64>,
    pub seed: Option<u64>,
    pub n_layer: Option<usize>,
    pub n_head: Option<usize>,
    pub n_embd: Option<usize>,
    pub block_size: Option<usize>,
    pub positions: Option<crate::model::Positions>,
    pub batch_size: Option<usize>,
    pub grad_accum: Option<usize>,
    pub lr: Option<f64>,
    pub min_lr: Option<f64>,
    pub warmup_steps: Option<usize>,
    pub weight_decay: Option<f64>,
    pub grad_clip: Option<f64>,
    pub optimizer: Option<super::config::UpdateRule>,
    pub dtype: Option<super::config::Dtype>,
    pub eval_interval: Option<usize>,
    pub eval_batches: Option<usize>,
    pub log_interval: Option<usize>,
    pub checkpoint_interval: Option<usize>,
    pub max_bad_steps: Option<usize>,
}

/// The flags a resume takes: when and how the run ends, how often it reports, and the
/// precision of its products (the weights and optimizer state are f32 either way).
/// Everything else (the model, the optimizer, the data order) is the checkpoint's.
pub const RESUME_FLAGS: &str = "--max-steps, --time-budget, --max-bad-steps, \
     --eval-interval, --log-interval, --checkpoint-interval, --dtype";

/// `set!(field => option, ...)`: each field takes its option's value when it was given.
macro_rules! set {
    ($($field:expr => $v:expr),* $(,)?) => {$(
        if let Some(v) = $v {
            $field = v;
        }
    )*};
}

impl Overrides {
    /// The flags given that a resume does not take, by name.
    fn not_for_resume(&self) -> Vec<&'static str> {
        [
            ("--seed", self.seed.is_some()),
            ("--layers", self.n_layer.is_some()),
            ("--heads", self.n_head.is_some()),
            ("--width", self.n_embd.is_some()),
            ("--context", self.block_size.is_some()),
            ("--positions", self.positions.is_some()),
            ("--batch-size", self.batch_size.is_some()),
            ("--grad-accum", self.grad_accum.is_some()),
            ("--lr", self.lr.is_some()),
            ("--min-lr", self.min_lr.is_some()),
            ("--warmup", self.warmup_steps.is_some()),
            ("--weight-decay", self.weight_decay.is_some()),
            ("--grad-clip", self.grad_clip.is_some()),
            ("--optimizer", self.optimizer.is_some()),
            ("--eval-batches", self.eval_batches.is_some()),
        ]
        .into_iter()
        .filter_map(|(flag, given)| given.then_some(flag))
        .collect()
    }

    /// Applies every given value to a new run's config.
    pub fn apply_new(&self, c: &mut TrainConfig) {
        set!(
            c.model.n_layer => self.n_layer,
            c.model.n_head => self.n_head,
            c.model.n_embd => self.n_embd,
            c.model.block_size => self.block_size,
            c.model.positions => self.positions,
            c.batch_size => self.batch_size,
            c.grad_accum => self.grad_accum,
            c.lr => self.lr,
            c.min_lr => self.min_lr,
            c.warmup_steps => self.warmup_steps,
            c.weight_decay => self.weight_decay,
            c.grad_clip => self.grad_clip,
            c.optimizer => self.optimizer,
            c.dtype => self.dtype,
            c.eval_interval => self.eval_interval,
            c.eval_batches => self.eval_batches,
            c.log_interval => self.log_interval,
            c.checkpoint_interval => self.checkpoint_interval,
            c.max_bad_steps => self.max_bad_steps,
            c.seed => self.seed,
        );
        self.apply_end(c);
        if self.lr.is_some() && self.min_lr.is_none() && c.min_lr > c.lr {
            c.min_lr = c.lr / 10.0;
        }
    }

    /// --max-steps alone makes a run count steps (its time budget no longer applies);
    /// --time-budget alone keeps any step count as a second end.
    fn apply_end(&self, c: &mut TrainConfig) {
        if let Some(s) = self.max_steps {
            c.max_steps = Some(s);
            if self.time_budget_s.is_none() {
                c.time_budget_s = None;
            }
        }
        if let Some(t) = self.time_budget_s {
            c.time_budget_s = Some(t);
        }
    }

    /// Applies a resume's flags to the checkpoint's config `c` at step `step` after
    /// `elapsed_s` seconds; refuses the flags a resume does not take and an end that
    /// is already behind the run. Returns one line per field changed.
    pub fn apply_resume(
        &self,
        c: &mut TrainConfig,
        step: usize,
        elapsed_s: f64,
    ) -> anyhow::Result<Vec<String>> {
        let refused = self.not_for_resume();
        anyhow::ensure!(
            refused.is_empty(),
            "a resumed run keeps its checkpoint's model, optimizer and data order, so {} \
             cannot change on --resume (a resume takes {RESUME_FLAGS}); to train with \
             other settings start a new run, e.g. with --config <run>/config.toml and the flags",
            refused.join(", ")
        );
        if let Some(s) = self.max_steps {
            anyhow::ensure!(
                s > step,
                "--max-steps {s} is not beyond the checkpoint's step {step}: nothing to train"
            );
        }
        if let Some(t) = self.time_budget_s {
            anyhow::ensure!(
                t > elapsed_s,
                "--time-budget {t} is not beyond the {elapsed_s:.1} s the run has trained"
            );
        }
        let before = c.clone();
        self.apply_end(c);
        set!(
            c.max_bad_steps => self.max_bad_steps,
            c.eval_interval => self.eval_interval,
            c.log_interval => self.log_interval,
            c.checkpoint_interval => self.checkpoint_interval,
            c.dtype => self.dtype,
        );
        let show = |v: Option<String>| v.unwrap_or_else(|| "none".to_string());
        let mut changed = Vec::new();
        let fields = [
            (
                "max_steps",
                show(before.max_steps.map(|v| v.to_string())),
                show(c.max_steps.map(|v| v.to_string())),
            ),
            (
                "time_budget_s",
                show(before.time_budget_s.map(|v| v.to_string())),
                show(c.time_budget_s.map(|v| v.to_string())),
            ),
            (
                "max_bad_steps",
                before.max_bad_steps.to_string(),
                c.max_bad_steps.to_string(),
            ),
            (
                "eval_interval",
                before.eval_interval.to_string(),
                c.eval_interval.to_string(),
            ),
            (
                "log_interval",
                before.log_interval.to_string(),
                c.log_interval.to_string(),
            ),
            (
                "checkpoint_interval",
                before.checkpoint_interval.to_string(),
                c.checkpoint_interval.to_string(),
            ),
            (
                "dtype",
                before.dtype.name().to_string(),
                c.dtype.name().to_string(),
            ),
        ];
        for (name, old, new) in fields {
            if old != new {
                changed.push(format!("resume changes {name}: {old} -> {new}"));
            }
        }
        if before.max_steps.is_none() && c.max_steps.is_some() {
            changed.push(format!(
                "the learning rate now follows the step schedule over {} steps: {:.2e} at step {step}",
                c.max_steps.unwrap_or(0),
                c.lr_at(step, c.max_steps.unwrap_or(0))
            ));
        }
        Ok(changed)
    }
}

/// What `tinylm train` was asked to do.
#[derive(Debug, Clone)]
pub struct TrainRequest {
    /// The training text (None: a resume's recorded text, else [`DEFAULT_CORPUS`]).
    pub data: Option<PathBuf>,
    /// The run directory (new run or fork); default runs/<preset>-<stamp>.
    pub out: Option<PathBuf>,
    /// A preset name (None: `default`; refused on a resume).
    pub preset: Option<String>,
    /// `bytes`, `bpe:N` or a tokenizer.json path (None: the preset's).
    pub tokenizer: Option<String>,
    /// A TOML file of config fields over the preset (refused on a resume).
    pub config_file: Option<PathBuf>,
    /// A run directory (its latest checkpoint) or a checkpoint directory to continue.
    pub resume: Option<PathBuf>,
    pub overrides: Overrides,
    /// Names a new run's default directory: runs/<preset>-<stamp>.
    pub stamp: String,
}

/// A run ready for its first step: the directory (locked, marked, tidied), the config,
/// the data and the tokenizer.
pub struct Prepared {
    pub run_dir: PathBuf,
    /// The training text read, and what the checkpoints record of it.
    pub corpus_record: CorpusRecord,
    /// Held for the whole run; released when dropped.
    pub lock: RunLock,
    pub config: TrainConfig,
    pub corpus: Corpus,
    pub tokenizer: Tokenizer,
    pub resume: Option<Loaded>,
    pub memory: MemoryEstimate,
    /// Bytes of the corpus file.
    pub text_bytes: usize,
    /// The corpus split into its training and validation text (for the form report:
    /// prompts from validation poems, copies counted against the training text).
    pub split: crate::data::SplitText,
    /// What set-up decided that the user should read (printed before training).
    pub notes: Vec<String>,
}

/// How the run directory relates to what came before.
enum Mode {
    New,
    /// A new run in the directory of one that never wrote a checkpoint.
    Restart,
    /// Continue the run in place (its latest checkpoint).
    Resume,
    /// Continue a checkpoint in a new run directory.
    Fork,
}

/// A new run's config, validated: the preset (the `--config` file's own `preset`, else
/// `--preset`), the file's fields over it, the flags over both. Also returns the
/// vocabulary size the file set, if it set one.
pub fn new_config(req: &TrainRequest) -> anyhow::Result<(TrainConfig, Option<i64>)> {
    let text = match &req.config_file {
        None => None,
        Some(path) => {
            let bytes = crate::data::read_input(
                path,
                "config",
                super::config_file::MAX_CONFIG_BYTES as u64,
            )?;
            let text = String::from_utf8(bytes)
                .map_err(|_| anyhow::anyhow!("config {} is not UTF-8 text", path.display()))?;
            Some((path, text))
        }
    };
    // A config's `preset` (a run's stored config.toml has one) is the preset its other
    // fields override, so that it names what the run is rather than only labelling it.
    let file_preset = match &text {
        Some((path, text)) => super::config_file::preset_of(text)
            .with_context(|| format!("config {}", path.display()))?,
        None => None,
    };
    let mut c = match (&file_preset, &text) {
        (Some(name), Some((path, _))) => {
            TrainConfig::preset(name).with_context(|| format!("config {}", path.display()))?
        }
        _ => TrainConfig::preset(req.preset.as_deref().unwrap_or("default"))?,
    };
    if let (Some(flag), Some(file)) = (&req.preset, &file_preset) {
        anyhow::ensure!(
            flag == file,
            "--preset {flag} and the config's preset = \"{file}\" disagree: give one of them"
        );
    }
    if let Some((path, text)) = &text {
        c = super::config_file::config_from_toml(&c, text)
            .with_context(|| format!("config {}", path.display()))?;
    }
    req.overrides.apply_new(&mut c);
    c.validate()?;
    let file_vocab = text
        .as_ref()
        .and_then(|(_, t)| super::config_file::vocab_size_of(t));
    Ok((c, file_vocab))
}

/// What a new run (or a fork) finds at its directory.
#[derive(Debug, PartialEq)]
enum Fresh {
    /// Nothing, or an empty directory.
    Empty,
    /// A run that never wrote a checkpoint (stopped before its first): it starts over,
    /// its own files replaced.
    Restart,
}

/// Refuses a directory a new run (or a fork) may not write into: one that holds
/// anything but a run that never checkpointed.
fn check_fresh_dir(dir: &Path) -> anyhow::Result<Fresh> {
    if !dir.exists() {
        return Ok(Fresh::Empty);
    }
    anyhow::ensure!(
        dir.is_dir(),
        "{} exists and is not a directory: choose another --out",
        dir.display()
    );
    if dir.join(checkpoint::RUN_MARKER).is_file() && checkpoint::list(dir).is_empty() {
        return Ok(Fresh::Restart);
    }
    anyhow::ensure!(
        !checkpoint::is_run_dir(dir),
        "run directory {} is already a run: continue it with --resume {}, or choose another --out",
        dir.display(),
        dir.display()
    );
    let first = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .next();
    anyhow::ensure!(
        first.is_none(),
        "{} is not empty and is not a tinylm run: a new run needs a new or empty directory \
         (tinylm never writes among files it did not make)",
        dir.display()
    );
    Ok(Fresh::Empty)
}

/// The run directory a checkpoint path belongs to, and the checkpoint's step directory.
fn run_of(path: &Path, loaded: &Loaded) -> PathBuf {
    if path.join("state.json").exists() {
        loaded
            .dir
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| path.to_path_buf())
    } else {
        path.to_path_buf()
    }
}

/// A `bpe:N[,han-piece=K]` spec: the BPE to train (None for other specs).
pub fn parse_bpe_spec(spec: &str) -> anyhow::Result<Option<bpe::BpeTrainOptions>> {
    let Some(rest) = spec.strip_prefix("bpe:") else {
        return Ok(None);
    };
    let bad = || {
        anyhow::anyhow!(
            "bad tokenizer {spec:?}: expected bpe:<vocab size>, optionally with \
             ,han-piece=<Han characters per piece> (e.g. bpe:8192,han-piece=1)"
        )
    };
    let mut parts = rest.split(',');
    let n = parts.next().unwrap_or("");
    let vocab: usize = n.parse().map_err(|_| bad())?;
    crate::limits::check_range("bpe_vocab_size", vocab as f64, n)?;
    let mut opts = bpe::BpeTrainOptions::new(vocab);
    for (i, part) in parts.enumerate() {
        let k = part.strip_prefix("han-piece=").ok_or_else(bad)?;
        anyhow::ensure!(i == 0, "bad tokenizer {spec:?}: han-piece given twice");
        opts.han_piece = k.parse().map_err(|_| bad())?;
        crate::limits::check_range("han_piece", opts.han_piece as f64, k)?;
    }
    Ok(Some(opts))
}

/// `bytes`, `bpe:N[,han-piece=K]` (trained here on `train_text`), or a tokenizer.json
/// path.
pub fn resolve_tokenizer(
    spec: &str,
    train_text: &[u8],
    notes: &mut Vec<String>,
) -> anyhow::Result<Tokenizer> {
    if let Some(opts) = parse_bpe_spec(spec)? {
        let text = std::str::from_utf8(train_text).map_err(|e| {
            anyhow::anyhow!(
                "a BPE is trained on UTF-8 text; the training text is not UTF-8 (first bad \
                 byte at offset {})",
                e.valid_up_to()
            )
        })?;
        let t0 = std::time::Instant::now();
        let bpe = bpe::train_bpe_from_text(text, &opts)?;
        notes.push(format!(
            "trained a BPE of {} tokens (at most {} Han character{} a piece) in {:.1} s",
            bpe.vocab_size(),
            opts.han_piece,
            if opts.han_piece == 1 { "" } else { "s" },
            t0.elapsed().as_secs_f64()
        ));
        return Ok(Tokenizer::Bpe(bpe));
    }
    Tokenizer::load(spec)
}

/// The step kind a run takes on `device` (for the memory estimate).
fn step_kind(device: &Device) -> StepKind {
    if device.is_cpu() {
        StepKind::Native
    } else {
        StepKind::Graph
    }
}

/// Checks everything, then makes the run directory its own (lock, marker, tidy) and
/// writes the tokenizer and config there. Nothing is written before every check passed.
pub fn prepare(req: &TrainRequest, device: &Device) -> anyhow::Result<Prepared> {
    super::faults::check_env()?;
    let mut notes = Vec::new();
    // ---- which run, which config
    let mut file_vocab = None;
    let (mode, run_dir, mut config, resume) = match &req.resume {
        None => {
            let (config, vocab) = new_config(req)?;
            file_vocab = vocab;
            let run_dir = req.out.clone().unwrap_or_else(|| {
                PathBuf::from("runs").join(format!(
                    "{}-{}",
                    req.preset.as_deref().unwrap_or("default"),
                    req.stamp
                ))
            });
            let mode = match check_fresh_dir(&run_dir)? {
                Fresh::Empty => Mode::New,
                Fresh::Restart => Mode::Restart,
            };
            (mode, run_dir, config, None)
        }
        Some(path) => {
            anyhow::ensure!(
                req.preset.is_none() && req.config_file.is_none(),
                "--preset and --config make a new run; a resumed run keeps its checkpoint's \
                 config (a resume takes {RESUME_FLAGS})"
            );
            anyhow::ensure!(path.exists(), "checkpoint {} not found", path.display());
            checkpoint::check_not_in_use(path)?;
            let loaded = checkpoint::load(path, false, device)?;
            let source = run_of(path, &loaded);
            let latest = checkpoint::list(&source).last().map(|(s, _)| *s);
            let same_dir = |a: &Path, b: &Path| match (a.canonicalize(), b.canonicalize()) {
                (Ok(a), Ok(b)) => a == b,
                _ => a == b,
            };
            let (mode, run_dir) = match &req.out {
                Some(out) if !same_dir(out, &source) => {
                    check_fresh_dir(out)?;
                    // Files of a never-checkpointed run there are replaced below.
                    (Mode::Fork, out.clone())
                }
                _ => {
                    anyhow::ensure!(
                        checkpoint::is_run_dir(&source),
                        "{} is not a tinylm run directory",
                        source.display()
                    );
                    if let Some(latest) = latest.filter(|&l| l > loaded.state.step) {
                        anyhow::bail!(
                            "{} is step {}, but run {} goes on to step {latest}: continuing the \
                             older step there would mix two histories (and prune the newer \
                             checkpoints). Fork it into a new run with --resume {} --out <new \
                             directory>, or continue the run from its latest with --resume {}",
                            loaded.dir.display(),
                            loaded.state.step,
                            source.display(),
                            loaded.dir.display(),
                            source.display()
                        );
                    }
                    (Mode::Resume, source.clone())
                }
            };
            let mut config = loaded.state.config.clone();
            notes.extend(req.overrides.apply_resume(
                &mut config,
                loaded.state.step,
                loaded.state.elapsed_s,
            )?);
            config.validate().map_err(|e| {
                anyhow::anyhow!(
                    "checkpoint {} has an invalid config: {e}",
                    loaded.dir.display()
                )
            })?;
            notes.push(format!(
                "{} {} at step {}{}",
                if matches!(mode, Mode::Fork) {
                    "forking"
                } else {
                    "resuming"
                },
                loaded.dir.display(),
                loaded.state.step,
                if matches!(mode, Mode::Fork) {
                    format!(" into the new run {}", run_dir.display())
                } else {
                    String::new()
                }
            ));
            (mode, run_dir, config, Some(loaded))
        }
    };

    // ---- data and tokenizer (a BPE's vocabulary is bounded by what it was asked for,
    // so the memory check can run before it is trained)
    let (corpus_record, text) = read_recorded_corpus(
        req.data.as_deref(),
        resume.as_ref().map(|l| (&l.dir, l.state.corpus.as_ref())),
    )?;
    if let Err(e) = std::str::from_utf8(&text) {
        // Bytes train a byte-level model all the same, but bits per character count
        // UTF-8 lead bytes, which means nothing for other text: say so.
        notes.push(format!(
            "warning: {} is not UTF-8 text (first invalid byte at offset {}): bits per \
             character count its UTF-8 lead bytes, not characters",
            corpus_record.path.display(),
            e.valid_up_to()
        ));
    }
    let split = split_text(&text, config.val_fraction, config.seed)?;
    let spec = match (&resume, &req.tokenizer) {
        (_, Some(spec)) => Some(spec.clone()),
        (None, None) => Some(config.tokenizer.clone()),
        (Some(_), None) => None,
    };
    let kind = step_kind(device);
    if let (None, Some(spec)) = (&resume, &spec) {
        if let Some(opts) = parse_bpe_spec(spec)? {
            let mut bound = config.clone();
            bound.model.vocab_size = opts.vocab_size;
            memory::check(&bound, text.len(), kind, memory::available_bytes())?;
        }
    }
    let tokenizer = match (&resume, spec) {
        (Some(loaded), None) => super::checkpoint_tokenizer(loaded)?,
        (_, Some(spec)) => resolve_tokenizer(&spec, &split.train, &mut notes)?,
        (None, None) => unreachable!("a new run always has a tokenizer spec"),
    };
    match &resume {
        Some(loaded) => {
            super::ensure_same_tokenizer(loaded, &tokenizer)?;
            anyhow::ensure!(
                config.model.vocab_size == tokenizer.vocab_size(),
                "checkpoint {} has a vocabulary of {} but its tokenizer has {} tokens",
                loaded.dir.display(),
                config.model.vocab_size,
                tokenizer.vocab_size()
            );
        }
        None => {
            if let Some(spec) = &req.tokenizer {
                config.tokenizer = spec.clone();
            }
            if let Some(v) = file_vocab.filter(|&v| v != tokenizer.vocab_size() as i64) {
                notes.push(format!(
                    "the config's vocab_size = {v} is replaced by the tokenizer's {} tokens \
                     (a model's vocabulary is its tokenizer's; choose it with --tokenizer)",
                    tokenizer.vocab_size()
                ));
            }
            config.model.vocab_size = tokenizer.vocab_size();
            config.validate()?;
        }
    }
    let corpus = Corpus::tokenize(&split, &tokenizer, config.model.block_size)?;
    let memory = memory::check(
        &config,
        corpus.train.len() + corpus.val.len(),
        kind,
        memory::available_bytes(),
    )?;

    // ---- the directory: only now is anything written
    std::fs::create_dir_all(&run_dir)
        .with_context(|| format!("cannot create run directory {}", run_dir.display()))?;
    let (lock, note) = RunLock::acquire(&run_dir)?;
    notes.extend(note);
    checkpoint::mark_run_dir(&run_dir)?;
    let tidied = checkpoint::clean_stale(&run_dir)?;
    if tidied > 0 {
        notes.push(format!(
            "removed {tidied} leftovers of an interrupted checkpoint write"
        ));
    }
    if let (Mode::Resume, Some(loaded)) = (&mode, &resume) {
        let (dropped, cut) = trim_metrics(&run_dir.join("metrics.jsonl"), loaded.state.step)?;
        if dropped > 0 {
            notes.push(format!(
                "metrics.jsonl: dropped {dropped} record{} after step {}, where the run \
                 went on past the checkpoint it resumes from",
                if dropped == 1 { "" } else { "s" },
                loaded.state.step
            ));
        }
        if cut {
            notes.push("metrics.jsonl: dropped a cut last line (a write interrupted)".into());
        }
    }
    if !matches!(mode, Mode::Resume) && checkpoint::list(&run_dir).is_empty() {
        // A run that stopped before its first checkpoint: its records would mix with
        // this run's, so they go (only the files a run writes, by name).
        let removed = checkpoint::remove_run_records(&run_dir)?;
        if removed > 0 {
            notes.push(format!(
                "starting over in {}: the run there stopped before its first checkpoint",
                run_dir.display()
            ));
        }
    }
    if let Tokenizer::Bpe(b) = &tokenizer {
        let path = run_dir.join("tokenizer.json");
        let json = b.to_json()?;
        if std::fs::read(&path).ok().as_deref() != Some(json.as_bytes()) {
            checkpoint::write_atomic(&path, json.as_bytes())?;
        }
    }
    write_config(&run_dir, &config, resume.as_ref(), &mut notes)?;
    Ok(Prepared {
        run_dir,
        corpus_record,
        lock,
        config,
        corpus,
        tokenizer,
        resume,
        memory,
        text_bytes: text.len(),
        split,
        notes,
    })
}

/// Reads the training text of a run: `given` (a --data flag), else the text the
/// checkpoint (`dir`, its record) says it was trained on, else [`DEFAULT_CORPUS`]. A
/// text that is not the recorded one (size and checksum) is refused: a resumed run, or
/// an evaluation split as the run split it, must see the same text.
pub fn read_recorded_corpus(
    given: Option<&Path>,
    checkpoint: Option<(&PathBuf, Option<&CorpusRecord>)>,
) -> anyhow::Result<(CorpusRecord, Vec<u8>)> {
    let recorded = checkpoint.and_then(|(dir, r)| Some((dir, r?)));
    let path = match (given, recorded) {
        (Some(path), _) => path.to_path_buf(),
        (None, Some((_, r))) => r.path.clone(),
        (None, None) => PathBuf::from(DEFAULT_CORPUS),
    };
    let text = read_corpus(&path).map_err(|e| match (given, recorded) {
        (None, Some((dir, _))) => e.context(format!(
            "checkpoint {} was trained on {}; if the text moved, give its new path \
             with --data",
            dir.display(),
            path.display()
        )),
        _ => e,
    })?;
    let record = CorpusRecord::of(&path, &text);
    if let Some((dir, r)) = recorded {
        anyhow::ensure!(
            r.same_text(&record),
            "{} is not the text checkpoint {} was trained on ({}: {} bytes, xxh64 {}; \
             this file: {} bytes, xxh64 {}): it must be the same text",
            path.display(),
            dir.display(),
            r.path.display(),
            r.bytes,
            r.xxh64,
            record.bytes,
            record.xxh64
        );
    }
    Ok((record, text))
}

/// Makes a resumed run's metrics.jsonl end where its checkpoint does: drops the
/// records of steps after `step` (the run went on past its last checkpoint before it
/// stopped, and will log those steps again) and a last line cut short by an interrupted
/// write, so that the next record starts on a line of its own. Lines that are not
/// records of ours are kept. Returns (records dropped, whether a cut line was).
fn trim_metrics(path: &Path, step: usize) -> anyhow::Result<(usize, bool)> {
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((0, false)),
        Err(e) => anyhow::bail!("cannot read {}: {e}", path.display()),
    };
    let cut = !text.is_empty() && !text.ends_with(b"\n");
    let mut kept = Vec::with_capacity(text.len());
    let mut dropped = 0;
    for line in text.split_inclusive(|&b| b == b'\n') {
        if !line.ends_with(b"\n") {
            continue; // the cut last line
        }
        let later = serde_json::from_slice::<serde_json::Value>(line)
            .ok()
            .and_then(|v| v.get("step")?.as_u64())
            .is_some_and(|s| s > step as u64);
        if later {
            dropped += 1;
        } else {
            kept.extend_from_slice(line);
        }
    }
    if dropped > 0 || cut {
        checkpoint::write_atomic(path, &kept)?;
    }
    Ok((dropped, cut))
}

/// Writes config.toml, except over a file the user edited (one that no longer says
/// what the checkpoint's config says): that one is left alone, with a note.
fn write_config(
    run_dir: &Path,
    config: &TrainConfig,
    resume: Option<&Loaded>,
    notes: &mut Vec<String>,
) -> anyhow::Result<()> {
    let path = run_dir.join("config.toml");
    if let (Some(loaded), Ok(existing)) = (resume, std::fs::read_to_string(&path)) {
        let ours = toml::from_str::<TrainConfig>(&existing)
            .is_ok_and(|c| c == loaded.state.config || &c == config);
        if !ours {
            notes.push(format!(
                "{} was edited; it is left as it is, and the run goes on with its \
                 checkpoint's config (config.toml is a record, not an input: start a new run \
                 with --config {} to use it)",
                path.display(),
                path.display()
            ));
            return Ok(());
        }
    }
    checkpoint::write_atomic(&path, toml::to_string_pretty(config)?.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::{parse_bpe_spec, Overrides};

    /// The products' precision may change on a resume (the state is f32 either way),
    /// and the resumed config still trains the same way.
    #[test]
    fn a_resume_takes_another_dtype() {
        let mut c = crate::train::config::TrainConfig::preset("default").unwrap();
        let o = Overrides {
            dtype: Some(crate::train::config::Dtype::Bf16),
            ..Default::default()
        };
        let changed = o.apply_resume(&mut c, 10, 1.0).unwrap();
        assert_eq!(c.dtype, crate::train::config::Dtype::Bf16);
        assert!(
            changed
                .iter()
                .any(|l| l.contains("dtype") && l.contains("bf16")),
            "{changed:?}"
        );
    }

    #[test]
    fn a_resume_refuses_another_optimizer() {
        let mut c = crate::train::config::TrainConfig::preset("default").unwrap();
        let o = Overrides {
            optimizer: Some(crate::train::config::UpdateRule::AdamW),
            ..Default::default()
        };
        let e = o.apply_resume(&mut c, 10, 1.0).unwrap_err().to_string();
        assert!(e.contains("--optimizer cannot change on --resume"), "{e}");
        assert_eq!(
            c,
            crate::train::config::TrainConfig::preset("default").unwrap()
        );
    }

    #[test]
    fn bpe_specs_parse_or_fail_with_the_field() {
        assert!(parse_bpe_spec("bytes").unwrap().is_none());
        assert!(parse_bpe_spec("runs/x/tokenizer.json").unwrap().is_none());
        let o = parse_bpe_spec("bpe:8192").unwrap().unwrap();
        assert_eq!(o.vocab_size, 8192);
        let default_piece = o.han_piece;
        let o = parse_bpe_spec("bpe:4096,han-piece=1").unwrap().unwrap();
        assert_eq!((o.vocab_size, o.han_piece), (4096, 1));
        assert_ne!(default_piece, 0);
        for (bad, want) in [
            ("bpe:", "bad tokenizer"),
            ("bpe:x", "bad tokenizer"),
            ("bpe:8192,han=1", "bad tokenizer"),
            ("bpe:8192,han-piece=", "bad tokenizer"),
            ("bpe:100", "bpe_vocab_size"),
            ("bpe:8192,han-piece=0", "han_piece"),
            ("bpe:8192,han-piece=65", "han_piece"),
            ("bpe:8192,han-piece=1,han-piece=2", "twice"),
        ] {
            let e = parse_bpe_spec(bad).unwrap_err().to_string();
            assert!(e.contains(want), "{bad}: {e}");
        }
    }
}
