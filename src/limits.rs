//! The documented range of every numeric option, in one table: checked before any
//! work (`TrainConfig::validate`, `GptConfig::validate`, the commands' own flags) and
//! listed in the README's "Guarantees". An error names the field, its flag and its range.

/// The most tokens one optimizer step may take (batch x accumulation x context).
pub const MAX_TOKENS_PER_STEP: usize = 1 << 24;

/// One documented range of a numeric option: the config field, the flag that sets it,
/// its bounds (inclusive unless said) and what it is.
pub struct Range {
    pub field: &'static str,
    pub flag: &'static str,
    pub min: f64,
    pub max: f64,
    /// The lower bound itself is excluded (e.g. lr > 0).
    pub min_exclusive: bool,
    /// The upper bound itself is excluded (e.g. beta < 1).
    pub max_exclusive: bool,
}

const fn r(field: &'static str, flag: &'static str, min: f64, max: f64) -> Range {
    Range {
        field,
        flag,
        min,
        max,
        min_exclusive: false,
        max_exclusive: false,
    }
}

const fn open(mut range: Range, min_exclusive: bool, max_exclusive: bool) -> Range {
    range.min_exclusive = min_exclusive;
    range.max_exclusive = max_exclusive;
    range
}

/// Steps, intervals and counts a loop compares with: far below any overflow, far above
/// any real run.
const MAX_COUNT: f64 = (1u64 << 40) as f64;

/// Every numeric field of a training config and its range, checked by
/// `TrainConfig::validate` and `GptConfig::validate` and listed in the README.
pub const RANGES: &[Range] = &[
    r("model.vocab_size", "--tokenizer", 1.0, 1_048_576.0),
    r("model.block_size", "--context", 1.0, 65_536.0),
    r("model.n_layer", "--layers", 1.0, 1024.0),
    r("model.n_head", "--heads", 1.0, 4096.0),
    r("model.n_embd", "--width", 1.0, 65_536.0),
    r("batch_size", "--batch-size", 1.0, 65_536.0),
    r("grad_accum", "--grad-accum", 1.0, 65_536.0),
    r("max_steps", "--max-steps", 1.0, MAX_COUNT),
    open(r("time_budget_s", "--time-budget", 0.0, 1e9), true, false),
    open(r("lr", "--lr", 0.0, 1.0), true, false),
    r("min_lr", "--min-lr", 0.0, 1.0),
    r("warmup_steps", "--warmup", 0.0, MAX_COUNT),
    r("weight_decay", "--weight-decay", 0.0, 10.0),
    open(r("beta1", "", 0.0, 1.0), false, true),
    open(r("beta2", "", 0.0, 1.0), false, true),
    r("grad_clip", "--grad-clip", 0.0, 1e6),
    r("eval_interval", "--eval-interval", 1.0, MAX_COUNT),
    r("eval_batches", "--eval-batches", 1.0, 65_536.0),
    r("log_interval", "--log-interval", 1.0, MAX_COUNT),
    r(
        "checkpoint_interval",
        "--checkpoint-interval",
        1.0,
        MAX_COUNT,
    ),
    r("keep_last", "", 1.0, 1_000_000.0),
    open(r("val_fraction", "", 0.0, 1.0), true, true),
    r("max_bad_steps", "--max-bad-steps", 1.0, MAX_COUNT),
    // Options of the commands rather than of the config.
    r("sample_tokens", "train --sample-tokens", 0.0, 1_000_000.0),
    r(
        "bpe_vocab_size",
        "tokenizer train --vocab-size, bpe:N",
        256.0,
        1_048_576.0,
    ),
    r("han_piece", "tokenizer train --han-piece", 1.0, 64.0),
    r("temperature", "sample --temperature", 0.0, 100.0),
    open(r("top_p", "sample --top-p", 0.0, 1.0), true, false),
    r("top_k", "sample --top-k", 0.0, 1_048_576.0),
    open(r("min_p", "sample --min-p", 0.0, 1.0), false, true),
    r(
        "repetition_penalty",
        "sample --repetition-penalty",
        1.0,
        10.0,
    ),
    r(
        "max_new_tokens",
        "sample --max-new-tokens",
        0.0,
        1_000_000.0,
    ),
    r("num_samples", "sample --num-samples", 1.0, 10_000.0),
    r("eval_batch_size", "eval --batch-size", 1.0, 65_536.0),
    r(
        "form_samples",
        "eval --samples, train --form-samples",
        0.0,
        10_000.0,
    ),
];

/// `--threads`: at most this many per core (more only adds switching; far more stalls
/// the machine creating threads).
pub const THREADS_PER_CORE: usize = 4;

/// Checks `--threads` against 1..=cores x [`THREADS_PER_CORE`].
pub fn check_threads(threads: usize) -> anyhow::Result<()> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let max = cores * THREADS_PER_CORE;
    anyhow::ensure!(
        (1..=max).contains(&threads),
        "--threads must be in [1, {max}] ({cores} cores x {THREADS_PER_CORE}), got {threads}"
    );
    Ok(())
}

/// `train --seed`: at most i64::MAX, because the run's config.toml stores it as a TOML
/// integer (an i64). `sample` and `eval` seed only a sampler, never stored: any u64.
pub const MAX_TRAIN_SEED: u64 = i64::MAX as u64;

/// Checks `train --seed` against [0, [`MAX_TRAIN_SEED`]] (exact, as an integer: an f64
/// cannot tell 2^63 - 1 from 2^63).
pub fn check_train_seed(seed: u64) -> anyhow::Result<()> {
    anyhow::ensure!(
        seed <= MAX_TRAIN_SEED,
        "--seed must be in [0, {MAX_TRAIN_SEED}] (config.toml stores it as a TOML \
         integer), got {seed}"
    );
    Ok(())
}

/// The README's table of ranges (a test keeps the README in step with [`RANGES`]).
pub fn ranges_markdown() -> String {
    let mut out = String::from("| field | flag | range |\n| --- | --- | --- |\n");
    let num = |v: f64| {
        if v == (1u64 << 40) as f64 {
            "2^40".to_string()
        } else if v == v.trunc() && v.abs() < 1e7 {
            format!("{}", v as i64)
        } else {
            format!("{v:e}")
        }
    };
    for r in RANGES {
        out += &format!(
            "| `{}` | {} | {}{}, {}{} |\n",
            r.field,
            if r.flag.is_empty() {
                "config only".to_string()
            } else {
                format!("`{}`", r.flag)
            },
            if r.min_exclusive { "(" } else { "[" },
            num(r.min),
            num(r.max),
            if r.max_exclusive { ")" } else { "]" }
        );
    }
    out += &format!(
        "| threads | `--threads` | [1, cores x {THREADS_PER_CORE}] |\n\
         | seed | `train --seed` | [0, {MAX_TRAIN_SEED}] (`sample`, `eval`: any u64) |\n\
         | tokens a step | batch x accumulation x context | [1, {MAX_TOKENS_PER_STEP}] |\n\
         | `lr x weight_decay` | | [0, 1) |\n\
         | `dtype` | `--dtype` | auto, f32 or bf16 |\n"
    );
    out
}

/// Checks `v` (shown as `shown`) against the range of `field` in [`RANGES`].
pub fn check_range(field: &str, v: f64, shown: &str) -> anyhow::Result<()> {
    let r = RANGES
        .iter()
        .find(|r| r.field == field || r.field.strip_prefix("model.") == Some(field))
        .unwrap_or_else(|| panic!("no range for {field}"));
    let low_ok = if r.min_exclusive {
        v > r.min
    } else {
        v >= r.min
    };
    let high_ok = if r.max_exclusive {
        v < r.max
    } else {
        v <= r.max
    };
    anyhow::ensure!(
        v.is_finite() && low_ok && high_ok,
        "{}{} must be in {}{}, {}{}, got {shown}",
        r.field,
        if r.flag.is_empty() {
            String::new()
        } else {
            format!(" ({})", r.flag)
        },
        if r.min_exclusive { "(" } else { "[" },
        r.min,
        r.max,
        if r.max_exclusive { ")" } else { "]" },
    );
    Ok(())
}
