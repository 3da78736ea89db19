//! The `tinylm` command line: argument parsing and wiring only.

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tinylm::data::{read_corpus, Corpus};
use tinylm::sample::SamplingOptions;
use tinylm::tokenizer::{utf8::StreamDecoder, Tokenizer};
use tinylm::train::{self, checkpoint, config::TrainConfig};

// Counts live heap bytes for `tinylm bench` (peak_extra_bytes); costs two relaxed atomic
// operations per allocation elsewhere.
#[global_allocator]
static ALLOC: tinylm::bench::alloc::CountingAlloc = tinylm::bench::alloc::CountingAlloc;

#[derive(Parser)]
#[command(
    name = "tinylm",
    version,
    about = "Train, sample from and benchmark a tiny byte-level GPT"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a model (default: the `default` preset on data/zh_corpus.txt, ~5 minutes).
    Train(Box<TrainArgs>),
    /// Generate text from a checkpoint, streamed as it is produced.
    Sample(SampleArgs),
    /// Loss, bits per byte, bits per character and perplexity of a checkpoint on a file.
    Eval(EvalArgs),
    /// Benchmarks: `loss`, `attention` or `train`.
    Bench(BenchCmd),
    /// Train a byte-level BPE tokenizer, or measure one on a text.
    #[command(subcommand)]
    Tokenizer(TokenizerCmd),
    /// Serve a checkpoint over HTTP: an OpenAI-style API (streaming) and a page to try it.
    Serve(ServeArgs),
}

#[derive(Args)]
struct ServeArgs {
    /// A checkpoint directory, or a run directory (its best checkpoint is used).
    #[arg(long)]
    checkpoint: PathBuf,
    /// Address to listen on; anything but loopback without --api-key gets a warning.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port (0 = any free one; the address is printed).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Require `Authorization: Bearer KEY` on every /v1 request.
    #[arg(long)]
    api_key: Option<String>,
    /// Requests generating at once (1-64); the others wait in a fair queue.
    #[arg(long, default_value_t = 2)]
    max_concurrency: usize,
    /// Requests that may wait for a slot (0-4096); beyond it a request gets 503.
    #[arg(long, default_value_t = 32)]
    max_queue: usize,
    #[command(flatten)]
    common: Common,
}

#[derive(Subcommand)]
enum TokenizerCmd {
    /// Train a byte-level BPE (all 256 bytes in its vocabulary, so any input encodes)
    /// and save it as a standard tokenizer.json.
    Train {
        #[arg(long)]
        data: PathBuf,
        /// Total vocabulary, the 256 byte tokens included.
        #[arg(long)]
        vocab_size: usize,
        #[arg(long, default_value = "tokenizer.json")]
        out: PathBuf,
        /// Longest run of Han characters in one pre-token (runs are cut into pieces of
        /// this many characters before merges are learned).
        #[arg(long, default_value_t = 2)]
        han_piece: usize,
    },
    /// Bytes per token, characters per token and vocabulary use on a text.
    Stats {
        /// `bytes`, a tokenizer.json, or a directory holding one.
        #[arg(long)]
        tokenizer: String,
        #[arg(long)]
        text: PathBuf,
    },
}

#[derive(Args)]
struct Common {
    /// Worker threads for matmuls and kernels (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Device: cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
}

#[derive(Args)]
struct TrainArgs {
    /// Training text (UTF-8; poems separated by blank lines).
    #[arg(long, default_value = "data/zh_corpus.txt")]
    data: PathBuf,
    /// Run directory for checkpoints, metrics and the config (default: runs/<preset>-<time>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Named preset: default, bench-ref, tiny.
    #[arg(long, default_value = "default")]
    preset: String,
    /// `bytes`, `bpe:N` (train a BPE of N tokens on the training split first), or the
    /// path of a tokenizer.json (default: the preset's). Stored in the run directory;
    /// sample and eval use it.
    #[arg(long)]
    tokenizer: Option<String>,
    /// TOML file whose fields override the preset (same names as the stored config.toml).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Continue the run in this directory from its latest checkpoint.
    #[arg(long)]
    resume: Option<PathBuf>,
    /// Optimizer steps: the cosine schedule runs over them and the run is bit-for-bit
    /// reproducible at a fixed --threads (without it, the preset's time budget rules).
    #[arg(long)]
    max_steps: Option<usize>,
    /// Training wall-clock budget in seconds.
    #[arg(long)]
    time_budget: Option<f64>,
    /// Seeds the initialisation, the train/validation split and the batch sampler.
    #[arg(long)]
    seed: Option<u64>,
    /// Layers (L).
    #[arg(long)]
    layers: Option<usize>,
    /// Attention heads (H); must divide the width.
    #[arg(long)]
    heads: Option<usize>,
    /// Model width (C).
    #[arg(long)]
    width: Option<usize>,
    /// Context length in tokens (T).
    #[arg(long)]
    context: Option<usize>,
    /// Sequences per micro-batch (B).
    #[arg(long)]
    batch_size: Option<usize>,
    /// Micro-batches per optimizer step.
    #[arg(long)]
    grad_accum: Option<usize>,
    /// Peak learning rate.
    #[arg(long)]
    lr: Option<f64>,
    /// Final learning rate of the cosine decay.
    #[arg(long)]
    min_lr: Option<f64>,
    /// Linear warmup steps.
    #[arg(long)]
    warmup: Option<usize>,
    /// AdamW decoupled weight decay of the weight matrices (not biases, gains, embeddings).
    #[arg(long)]
    weight_decay: Option<f64>,
    /// Global gradient-norm clip (0 = off).
    #[arg(long)]
    grad_clip: Option<f64>,
    /// Steps between validation evaluations.
    #[arg(long)]
    eval_interval: Option<usize>,
    /// Batches per validation evaluation.
    #[arg(long)]
    eval_batches: Option<usize>,
    /// Steps between log lines.
    #[arg(long)]
    log_interval: Option<usize>,
    /// Steps between checkpoints.
    #[arg(long)]
    checkpoint_interval: Option<usize>,
    /// Consecutive steps with a non-finite loss or gradient (each skipped) before the
    /// run stops, keeping its last good checkpoint.
    #[arg(long)]
    max_bad_steps: Option<usize>,
    /// Tokens of the sample printed at the end (0 = none).
    #[arg(long, default_value_t = 300)]
    sample_tokens: usize,
    /// Hide the progress bar (log lines are still printed).
    #[arg(long)]
    no_progress: bool,
    #[command(flatten)]
    common: Common,
}

#[derive(Args)]
struct SampleArgs {
    /// A checkpoint directory, or a run directory (its best checkpoint is used).
    #[arg(long)]
    checkpoint: PathBuf,
    /// Text to continue.
    #[arg(long, default_value = "")]
    prompt: String,
    /// Read the prompt from a file instead.
    #[arg(long)]
    prompt_file: Option<PathBuf>,
    #[arg(long, default_value_t = 300)]
    max_new_tokens: usize,
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.8)]
    temperature: f32,
    /// Keep the k most likely tokens (0 = all).
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    /// Nucleus sampling threshold (1 = off).
    #[arg(long, default_value_t = 0.95)]
    top_p: f32,
    #[arg(long, default_value_t = 1337)]
    seed: u64,
    #[arg(long, default_value_t = 1)]
    num_samples: usize,
    /// Recompute the whole window for every token instead of using the KV cache.
    #[arg(long)]
    no_cache: bool,
    #[command(flatten)]
    common: Common,
}

#[derive(Args)]
struct EvalArgs {
    /// A checkpoint directory, or a run directory (its best checkpoint is used).
    #[arg(long)]
    checkpoint: PathBuf,
    /// The text to score, whole, in context-sized windows.
    #[arg(long)]
    text: PathBuf,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    #[arg(long, default_value_t = 16)]
    batch_size: usize,
    #[command(flatten)]
    common: Common,
}

#[derive(Args)]
struct BenchCmd {
    /// Which bench: loss, attention or train.
    what: String,
    /// Print a JSON array of records instead of a table.
    #[arg(long)]
    json: bool,
    /// Only cases whose name contains this.
    #[arg(long)]
    filter: Option<String>,
    /// Small shapes and few repetitions (a smoke run).
    #[arg(long)]
    quick: bool,
    #[command(flatten)]
    common: Common,
}

fn main() {
    // Keep freed activation buffers in the heap instead of returning them to the OS:
    // otherwise every training step page-faults its temporaries back in (BENCHMARKS.md).
    tinylm::kernels::tune_glibc_malloc();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind::{
                DisplayHelp, DisplayHelpOnMissingArgumentOrSubcommand, DisplayVersion,
            };
            if matches!(
                e.kind(),
                DisplayHelp | DisplayVersion | DisplayHelpOnMissingArgumentOrSubcommand
            ) {
                e.exit();
            }
            // One line, like every other error (clap's usage hint follows on later lines).
            let text = e.render().to_string();
            eprintln!("{}", text.lines().next().unwrap_or("error: bad arguments"));
            std::process::exit(2);
        }
    };
    let result = match cli.command {
        Command::Train(a) => cmd_train(*a),
        Command::Sample(a) => cmd_sample(a),
        Command::Eval(a) => cmd_eval(a),
        Command::Bench(a) => cmd_bench(a),
        Command::Tokenizer(a) => cmd_tokenizer(a),
        Command::Serve(a) => cmd_serve(a),
    };
    if let Err(e) = result {
        // One line that names the problem.
        // Only the first line: candle appends a backtrace when RUST_BACKTRACE is set.
        let msg = format!("{e:#}");
        let msg = msg.lines().next().unwrap_or("").trim_end();
        eprintln!("error: {msg}");
        std::process::exit(1);
    }
}

fn setup(c: &Common) -> anyhow::Result<candle_core::Device> {
    let threads = c.threads.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    tinylm::device::set_threads(threads)?;
    tinylm::device::select(&c.device)
}

fn resolve_config(a: &TrainArgs) -> anyhow::Result<TrainConfig> {
    let mut c = TrainConfig::preset(&a.preset)?;
    if let Some(path) = &a.config {
        let len = std::fs::metadata(path)
            .with_context(|| format!("cannot read config {}", path.display()))?
            .len();
        anyhow::ensure!(
            len <= train::config_file::MAX_CONFIG_BYTES as u64,
            "config {} is {len} bytes, too large to be a config",
            path.display()
        );
        let text = std::fs::read_to_string(path).with_context(|| {
            format!("cannot read config {} (is it UTF-8 text?)", path.display())
        })?;
        c = train::config_file::config_from_toml(&c, &text)
            .with_context(|| format!("config {}", path.display()))?;
    }
    let m = &mut c.model;
    macro_rules! set {
        ($field:expr, $arg:expr) => {
            if let Some(v) = $arg {
                $field = v;
            }
        };
    }
    set!(m.n_layer, a.layers);
    set!(m.n_head, a.heads);
    set!(m.n_embd, a.width);
    set!(m.block_size, a.context);
    set!(c.batch_size, a.batch_size);
    set!(c.grad_accum, a.grad_accum);
    set!(c.lr, a.lr);
    set!(c.min_lr, a.min_lr);
    set!(c.warmup_steps, a.warmup);
    set!(c.weight_decay, a.weight_decay);
    set!(c.grad_clip, a.grad_clip);
    set!(c.eval_interval, a.eval_interval);
    set!(c.eval_batches, a.eval_batches);
    set!(c.log_interval, a.log_interval);
    set!(c.checkpoint_interval, a.checkpoint_interval);
    set!(c.max_bad_steps, a.max_bad_steps);
    set!(c.seed, a.seed);
    if let Some(s) = a.max_steps {
        c.max_steps = Some(s);
        if a.time_budget.is_none() {
            c.time_budget_s = None;
        }
    }
    if let Some(t) = a.time_budget {
        c.time_budget_s = Some(t);
    }
    if a.lr.is_some() && a.min_lr.is_none() && c.min_lr > c.lr {
        c.min_lr = c.lr / 10.0;
    }
    c.validate()?;
    Ok(c)
}

/// "YYYYmmdd-HHMMSS" in UTC, for default run names.
fn timestamp() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = (secs / 86400, secs % 86400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + (m <= 2) as i64;
    format!(
        "{y:04}{m:02}{d:02}-{:02}{:02}{:02}",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

fn cmd_train(a: TrainArgs) -> anyhow::Result<()> {
    train::faults::check_env()?;
    let device = setup(&a.common)?;
    // The run directory: --out, else the resumed run (the parent of a checkpoint
    // directory), else a new runs/<preset>-<time>.
    let new_config = match &a.resume {
        Some(_) => None,
        None => Some(resolve_config(&a)?),
    };
    let run_dir = match (&a.out, &a.resume) {
        (Some(out), _) => out.clone(),
        (None, Some(dir)) if dir.join("state.json").exists() => dir
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| dir.clone()),
        (None, Some(dir)) => dir.clone(),
        (None, None) => PathBuf::from("runs").join(format!("{}-{}", a.preset, timestamp())),
    };
    if let Some(dir) = &a.resume {
        anyhow::ensure!(dir.exists(), "checkpoint {} not found", dir.display());
    }
    std::fs::create_dir_all(&run_dir)
        .with_context(|| format!("cannot create run directory {}", run_dir.display()))?;
    // Held until this function returns, on every path.
    let (lock, note) = checkpoint::RunLock::acquire(&run_dir)?;
    if let Some(note) = note {
        println!("{note}");
    }
    let tidied = checkpoint::clean_stale(&run_dir)?;
    if tidied > 0 {
        println!("removed {tidied} leftovers of an interrupted checkpoint write");
    }
    let (mut config, resume) = match (new_config, &a.resume) {
        (Some(config), _) => {
            anyhow::ensure!(
                checkpoint::list(&run_dir).is_empty(),
                "run directory {} already holds checkpoints: continue it with --resume {} or choose another --out",
                run_dir.display(),
                run_dir.display()
            );
            (config, None)
        }
        (None, resume) => {
            let dir = resume.as_ref().unwrap_or(&run_dir);
            let loaded = checkpoint::load(dir, false, &device)?;
            let mut config = loaded.state.config.clone();
            if let Some(s) = a.max_steps {
                config.max_steps = Some(s);
            }
            if let Some(t) = a.time_budget {
                config.time_budget_s = Some(t);
            }
            if let Some(n) = a.max_bad_steps {
                config.max_bad_steps = n;
            }
            println!(
                "resuming {} at step {}",
                loaded.dir.display(),
                loaded.state.step
            );
            (config, Some(loaded))
        }
    };
    let text = read_corpus(&a.data)?;
    let split = tinylm::data::split_text(&text, config.val_fraction, config.seed)?;
    let tokenizer = match (&resume, &a.tokenizer) {
        // A resumed run keeps its tokenizer; an explicit different one is refused by
        // the fingerprint check in train::run.
        (Some(loaded), None) => train::checkpoint_tokenizer(loaded)?,
        (_, Some(spec)) => resolve_tokenizer(spec, &split.train)?,
        (None, None) => resolve_tokenizer(&config.tokenizer, &split.train)?,
    };
    if let Some(loaded) = &resume {
        // Checked before anything is written into the run directory.
        train::ensure_same_tokenizer(loaded, &tokenizer)?;
    }
    if let Some(spec) = &a.tokenizer {
        config.tokenizer = spec.clone();
    }
    config.model.vocab_size = tokenizer.vocab_size();
    let corpus = Corpus::tokenize(split, &tokenizer, config.model.block_size)?;
    tokenizer.save_to_dir(&run_dir)?;
    // Refused here, before any large allocation, with the estimate.
    // `tinylm train` runs the native step wherever the parameters are f32 on the CPU.
    let step = if device.is_cpu() {
        train::memory::StepKind::Native
    } else {
        train::memory::StepKind::Graph
    };
    let mem = train::memory::check(
        &config,
        corpus.train.len() + corpus.val.len(),
        step,
        train::memory::available_bytes(),
    )?;
    let config_toml = toml::to_string_pretty(&config)?;
    checkpoint::write_atomic(&run_dir.join("config.toml"), config_toml.as_bytes())?;
    println!("run directory: {}", run_dir.display());
    println!(
        "corpus {}: {} training tokens ({} poems), {} validation tokens ({} poems); tokenizer {} ({:.2} bytes/token)",
        a.data.display(),
        corpus.train.len(),
        corpus.train_docs,
        corpus.val.len(),
        corpus.val_docs,
        tokenizer.describe(),
        text.len() as f64 / (corpus.train.len() + corpus.val.len()).max(1) as f64
    );
    println!(
        "model: {} parameters; {} tokens per step; threads {}",
        config.model.num_params(),
        config.tokens_per_step(),
        tinylm::device::threads()
    );
    println!(
        "memory: about {mem}{}",
        train::memory::available_bytes()
            .map(|b| format!(", of {} available", train::memory::human(b)))
            .unwrap_or_default()
    );
    println!("config:\n{config_toml}");

    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        let release = lock.releaser();
        ctrlc::set_handler(move || {
            if stop.swap(true, Ordering::SeqCst) {
                eprintln!("second interrupt: exiting without a checkpoint");
                release();
                std::process::exit(130);
            }
            eprintln!(
                "interrupt: finishing this step and writing a checkpoint (interrupt again to abort)"
            );
        })
        .context("cannot install the Ctrl-C handler")?;
    }
    let opts = train::RunOptions {
        run_dir: run_dir.clone(),
        device: device.clone(),
        stop,
        progress: !a.no_progress,
        stop_at_step: None,
    };
    let summary = train::run(&config, &corpus, &tokenizer, &opts, resume)?;
    println!(
        "{} after {} steps in {:.1} s ({:.0} tok/s): val loss {:.4}, {:.3} bits/byte, {:.3} bits/char",
        if summary.interrupted { "interrupted" } else { "done" },
        summary.steps,
        summary.elapsed_s,
        summary.tokens_per_s,
        summary.final_val.loss,
        summary.final_val.bits_per_byte,
        summary.final_val.bits_per_char
    );
    println!("checkpoint: {}", summary.last_checkpoint.display());
    if summary.interrupted {
        println!("resume with: tinylm train --resume {}", run_dir.display());
        return Ok(());
    }
    if a.sample_tokens > 0 {
        let loaded = checkpoint::load(&run_dir, true, &device)?;
        let model = tinylm::model::Gpt::from_tensors(&loaded.state.config.model, loaded.model)?;
        println!(
            "--- sample ({} tokens, temperature 0.8, best checkpoint) ---",
            a.sample_tokens
        );
        stream_sample(
            &model,
            &tokenizer,
            b"\n",
            a.sample_tokens,
            &SamplingOptions::default(),
            true,
            &device,
        )?;
        println!("\n---");
    }
    Ok(())
}

/// Generates and prints text as it comes, never splitting a UTF-8 sequence.
fn stream_sample(
    model: &tinylm::model::Gpt,
    tokenizer: &Tokenizer,
    prompt: &[u8],
    max_new: usize,
    o: &SamplingOptions,
    use_cache: bool,
    device: &candle_core::Device,
) -> anyhow::Result<()> {
    let ids = tokenizer.encode(prompt)?;
    let mut dec = StreamDecoder::new();
    let mut out = std::io::stdout().lock();
    let mut write_err = None;
    tinylm::sample::generate(model, &ids, max_new, o, use_cache, device, |id| {
        let text = dec.push(&tokenizer.token_bytes(id));
        if let Err(e) = out.write_all(text.as_bytes()).and_then(|_| out.flush()) {
            write_err.get_or_insert(e);
        }
    })?;
    write!(out, "{}", dec.finish())?;
    if let Some(e) = write_err {
        return Err(e.into());
    }
    Ok(())
}

fn load_model(
    path: &Path,
    device: &candle_core::Device,
) -> anyhow::Result<(tinylm::model::Gpt, Tokenizer)> {
    let loaded = checkpoint::load(path, true, device)?;
    let tokenizer = train::checkpoint_tokenizer(&loaded)?;
    let model = tinylm::model::Gpt::from_tensors(&loaded.state.config.model, loaded.model)
        .with_context(|| {
            format!(
                "checkpoint {} does not fit its config",
                loaded.dir.display()
            )
        })?;
    Ok((model, tokenizer))
}

/// `bytes`, `bpe:N` (trained here on `train_text`), or a tokenizer.json path.
fn resolve_tokenizer(spec: &str, train_text: &[u8]) -> anyhow::Result<Tokenizer> {
    if let Some(n) = spec.strip_prefix("bpe:") {
        let vocab: usize = n
            .parse()
            .map_err(|_| anyhow::anyhow!("bad tokenizer {spec:?}: expected bpe:<vocab size>"))?;
        let text = std::str::from_utf8(train_text)
            .context("a BPE is trained on UTF-8 text; the corpus is not UTF-8")?;
        let t0 = std::time::Instant::now();
        let bpe = tinylm::tokenizer::bpe::train_bpe_from_text(
            text,
            &tinylm::tokenizer::bpe::BpeTrainOptions::new(vocab),
        )?;
        println!(
            "trained a BPE of {} tokens in {:.1} s",
            bpe.vocab_size(),
            t0.elapsed().as_secs_f64()
        );
        return Ok(Tokenizer::Bpe(bpe));
    }
    Tokenizer::load(spec)
}

fn cmd_tokenizer(cmd: TokenizerCmd) -> anyhow::Result<()> {
    match cmd {
        TokenizerCmd::Train {
            data,
            vocab_size,
            out,
            han_piece,
        } => {
            let text = read_corpus(&data)?;
            if let Err(e) = std::str::from_utf8(&text) {
                anyhow::bail!(
                    "{} is not UTF-8 (first bad byte at offset {}): a BPE is trained on UTF-8 text",
                    data.display(),
                    e.valid_up_to()
                );
            }
            let mut opts = tinylm::tokenizer::bpe::BpeTrainOptions::new(vocab_size);
            opts.han_piece = han_piece;
            let t0 = std::time::Instant::now();
            let bpe = tinylm::tokenizer::bpe::train_bpe(std::slice::from_ref(&data), &opts)?;
            bpe.save(&out)?;
            let tok = Tokenizer::Bpe(bpe);
            let stats = tinylm::tokenizer::stats::stats(&tok, &text)?;
            println!(
                "trained {} in {:.1} s, saved to {}\n{stats}",
                tok.describe(),
                t0.elapsed().as_secs_f64(),
                out.display()
            );
            Ok(())
        }
        TokenizerCmd::Stats { tokenizer, text } => {
            let tok = Tokenizer::load(&tokenizer)?;
            let bytes = read_corpus(&text)?;
            println!("{}", tinylm::tokenizer::stats::stats(&tok, &bytes)?);
            Ok(())
        }
    }
}

fn cmd_sample(a: SampleArgs) -> anyhow::Result<()> {
    let device = setup(&a.common)?;
    let (model, tokenizer) = load_model(&a.checkpoint, &device)?;
    let prompt = match &a.prompt_file {
        Some(p) => {
            std::fs::read(p).with_context(|| format!("cannot read prompt file {}", p.display()))?
        }
        None => a.prompt.clone().into_bytes(),
    };
    anyhow::ensure!(a.num_samples > 0, "--num-samples must be at least 1");
    for i in 0..a.num_samples {
        let o = SamplingOptions {
            temperature: a.temperature,
            top_k: a.top_k,
            top_p: a.top_p,
            seed: a.seed.wrapping_add(i as u64),
        };
        if a.num_samples > 1 {
            println!("--- sample {} ---", i + 1);
        }
        print!("{}", String::from_utf8_lossy(&prompt));
        stream_sample(
            &model,
            &tokenizer,
            &prompt,
            a.max_new_tokens,
            &o,
            !a.no_cache,
            &device,
        )?;
        println!();
    }
    Ok(())
}

fn cmd_eval(a: EvalArgs) -> anyhow::Result<()> {
    let device = setup(&a.common)?;
    let (model, tokenizer) = load_model(&a.checkpoint, &device)?;
    anyhow::ensure!(a.batch_size > 0, "--batch-size must be at least 1");
    let text = read_corpus(&a.text)?;
    let tokens = tokenizer.encode(&text)?;
    let rep = tinylm::eval::evaluate_stream(&model, &tokenizer, &tokens, a.batch_size, &device)?;
    if a.json {
        println!("{}", serde_json::to_string(&rep)?);
    } else {
        println!(
            "{}: {} tokens, {} bytes, {} characters ({:.2} bytes/token)\nloss {:.4} nats/token | {:.4} bits/byte | {:.4} bits/char | perplexity {:.3}",
            a.text.display(),
            rep.tokens,
            rep.bytes,
            rep.chars,
            rep.bytes_per_token,
            rep.loss,
            rep.bits_per_byte,
            rep.bits_per_char,
            rep.perplexity
        );
    }
    Ok(())
}

fn cmd_bench(a: BenchCmd) -> anyhow::Result<()> {
    setup(&a.common)?;
    let args = tinylm::bench::BenchArgs {
        json: a.json,
        filter: a.filter,
        quick: a.quick,
    };
    match a.what.as_str() {
        "loss" => tinylm::bench::loss::run(&args),
        "attention" => tinylm::bench::attention::run(&args),
        "train" => tinylm::bench::train::run(&args),
        other => anyhow::bail!("unknown bench {other:?}: expected loss, attention or train"),
    }
}

fn cmd_serve(a: ServeArgs) -> anyhow::Result<()> {
    let opts = tinylm::serve::ServeOptions {
        checkpoint: a.checkpoint,
        host: a.host,
        port: a.port,
        api_key: a.api_key,
        max_concurrency: a.max_concurrency,
        max_queue: a.max_queue,
    };
    opts.validate()?;
    train::faults::check_env()?;
    let device = setup(&a.common)?;
    tinylm::serve::run(&opts, &device)
}
