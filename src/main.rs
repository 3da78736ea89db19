//! The `tinylm` command line: argument parsing and wiring only.

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tinylm::data::read_corpus;
use tinylm::sample::SamplingOptions;
use tinylm::tokenizer::{utf8::StreamDecoder, Tokenizer};
use tinylm::train::{self, checkpoint};

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
    ///
    /// The log's MFU is the step's model FLOPs (PaLM's convention: 6 per matmul weight
    /// and token, the blocks' matrices and the tied head, not biases, gains or position
    /// embeddings; plus 6·L·C·T for the causal half of attention; recomputation not
    /// counted) a second, over the better of candle's 1024³ matmul rate and the step's
    /// own GEMM on its MLP product (in bf16 when the products run in bf16, as
    /// `--dtype` resolves: MFU is then against the bf16 products' rate), measured at
    /// the start of the run with the same
    /// threads. A step that beats it has it measured again (at most 3 times a run); a
    /// step still faster raises it to its own rate, so MFU never reads above 100%.
    /// Muon's Newton–Schulz products are the optimizer's work, not the model's: not
    /// counted.
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
    /// Draw runs' training curves (loss, validation bits/byte, lr, gradient norm,
    /// tokens/s) into one SVG or PNG.
    Plot(tinylm::plot::PlotArgs),
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
        /// The tokenizer file. Refused if the path exists, unless --force.
        #[arg(long, default_value = "tokenizer.json")]
        out: PathBuf,
        /// Longest run of Han characters in one pre-token (runs are cut into pieces of
        /// this many characters before merges are learned).
        #[arg(long, default_value_t = tinylm::tokenizer::bpe::DEFAULT_HAN_PIECE)]
        han_piece: usize,
        /// Replace --out if it is a regular file. Anything else there (a directory, a
        /// symbolic link, a FIFO) is refused all the same: a link is never followed.
        #[arg(long)]
        force: bool,
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
    /// Training text (UTF-8; poems separated by blank lines) [default: data/zh_corpus.txt;
    /// on a resume, the text the run recorded, which a resume refuses to change].
    #[arg(long)]
    data: Option<PathBuf>,
    /// Run directory for checkpoints, metrics and the config (default: runs/<preset>-<time>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Named preset: default (~5 min), poet (~30 min), bench-ref, bench-8l, bench-gpt2s, tiny (default: default).
    #[arg(long)]
    preset: Option<String>,
    /// `bytes`, `bpe:N[,han-piece=K]` (train a BPE of N tokens on the training split
    /// first, Han runs cut into pieces of at most K characters, default 1), or the path
    /// of a tokenizer.json (default: the preset's). Stored in the run directory;
    /// sample and eval use it.
    #[arg(long)]
    tokenizer: Option<String>,
    /// TOML file whose fields override the preset (same names as the stored config.toml).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Continue the run in this directory from its latest checkpoint, or a checkpoint
    /// directory (an older one only with --out NEW_DIR: a fork). A resume takes only
    /// --max-steps, --time-budget, --max-bad-steps, the interval flags and --dtype, and
    /// --data where the recorded text moved (it must be the same text).
    #[arg(long)]
    resume: Option<PathBuf>,
    /// Optimizer steps: the cosine schedule runs over them and the run is bit-for-bit
    /// reproducible at a fixed --threads on CPUs alike in AVX512-BF16 (--dtype auto
    /// differs there; --dtype f32 does not) (without it, the preset's time budget
    /// rules).
    #[arg(long)]
    max_steps: Option<usize>,
    /// Training wall-clock budget in seconds.
    #[arg(long)]
    time_budget: Option<f64>,
    /// Seeds the initialisation, the train/validation split and the batch sampler
    /// (0 to 2^63 - 1: config.toml stores it as a TOML integer).
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
    /// Positions: learned (an embedding per position, GPT-2) or rotary (RoFormer)
    /// (default: the preset's; rotary for default and poet).
    #[arg(long, value_parser = parse_positions)]
    positions: Option<tinylm::model::Positions>,
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
    /// Decoupled weight decay of the weight matrices, under AdamW or Muon (not biases,
    /// gains, embeddings).
    #[arg(long)]
    weight_decay: Option<f64>,
    /// Global gradient-norm clip (0 = off).
    #[arg(long)]
    grad_clip: Option<f64>,
    /// Update rule of the weight matrices: adamw, or muon (orthogonalised momentum, at
    /// the same learning rate); everything else is always AdamW's (default: the preset's;
    /// muon for default and poet, adamw for the others).
    #[arg(long, value_parser = parse_optimizer)]
    optimizer: Option<train::config::UpdateRule>,
    /// Precision of the step's matrix products (the layers' and the tied head's;
    /// attention and Muon's Newton–Schulz stay f32): f32, bf16 (both factors rounded
    /// to bf16, sums in f32, through AVX512-BF16; the activations kept only for those
    /// products are stored in the bf16 they are rounded to, while weights, optimizer
    /// state, the other activations and the loss stay f32, so a resume may change it),
    /// or auto: bf16 where the CPU has AVX512-BF16 and the run takes the native CPU
    /// step, f32 elsewhere. The run prints what it got; on a CPU without AVX512-BF16,
    /// bf16 says so and runs f32 products (default: auto, every preset's; f32 for a
    /// config written before this option).
    #[arg(long, value_parser = parse_train_dtype)]
    dtype: Option<train::config::Dtype>,
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
    /// At the end, a poem from the best checkpoint: the title and author of a
    /// validation poem continued until the poem ends, at most this many tokens (0 = none).
    #[arg(long, default_value_t = 300)]
    sample_tokens: usize,
    /// At the end, the form of this many samples (`tinylm eval --samples`), printed and
    /// written to metrics.jsonl (0 = none).
    #[arg(long, default_value_t = 20)]
    form_samples: usize,
    /// Hide the progress bar (log lines are still printed).
    #[arg(long)]
    no_progress: bool,
    #[command(flatten)]
    common: Common,
}

/// How tokens are drawn; each unset option takes the product's default
/// (`SamplingOptions::default()`, chosen by the form measurements in BENCHMARKS.md).
#[derive(Args, Clone)]
struct SamplingArgs {
    /// Softmax temperature (0 = greedy).
    #[arg(long)]
    temperature: Option<f32>,
    /// Keep the k most likely tokens (0 = all).
    #[arg(long)]
    top_k: Option<usize>,
    /// Nucleus sampling threshold (1 = off).
    #[arg(long)]
    top_p: Option<f32>,
    /// Keep tokens at least this fraction as likely as the most likely (0 = off).
    #[arg(long)]
    min_p: Option<f32>,
    /// Penalty on the logits of tokens among the last 64 (1 = off).
    #[arg(long)]
    repetition_penalty: Option<f32>,
    /// Seed of the first sample (the i-th uses seed + i).
    #[arg(long)]
    seed: Option<u64>,
}

impl SamplingArgs {
    /// The options of the i-th sample, validated.
    fn options(&self, i: usize) -> anyhow::Result<SamplingOptions> {
        let d = SamplingOptions::default();
        let o = SamplingOptions {
            temperature: self.temperature.unwrap_or(d.temperature),
            top_k: self.top_k.unwrap_or(d.top_k),
            top_p: self.top_p.unwrap_or(d.top_p),
            min_p: self.min_p.unwrap_or(d.min_p),
            repetition_penalty: self.repetition_penalty.unwrap_or(d.repetition_penalty),
            seed: self.seed.unwrap_or(d.seed).wrapping_add(i as u64),
        };
        o.validate()?;
        Ok(o)
    }
}

#[derive(Args)]
struct SampleArgs {
    /// A checkpoint directory, or a run directory (its best checkpoint is used).
    #[arg(long)]
    checkpoint: PathBuf,
    /// Text to continue.
    #[arg(long, default_value = "")]
    prompt: String,
    /// Read the prompt from a file instead (not with --prompt).
    #[arg(long, conflicts_with = "prompt")]
    prompt_file: Option<PathBuf>,
    #[arg(long, default_value_t = 300)]
    max_new_tokens: usize,
    #[command(flatten)]
    sampling: SamplingArgs,
    #[arg(long, default_value_t = 1)]
    num_samples: usize,
    /// Recompute the whole window for every token instead of using the KV cache: the
    /// same tokens, slower. Both see the same window: the tokens since it last filled
    /// the context T; when it fills, it restarts from the last T/2 tokens.
    #[arg(long)]
    no_cache: bool,
    /// Stop where the poem ends: at the first blank line after its body has begun (as
    /// the poem `train` prints at its end).
    #[arg(long)]
    poem: bool,
    #[command(flatten)]
    common: Common,
}

#[derive(Args)]
struct EvalArgs {
    /// A checkpoint directory, or a run directory (its best checkpoint is used).
    #[arg(long)]
    checkpoint: PathBuf,
    /// A text to score, whole, in context-sized windows: loss, bits per byte and per
    /// character, perplexity.
    #[arg(long)]
    text: Option<PathBuf>,
    /// Generate N samples (default 20) from the title and author lines of validation
    /// poems and measure their form: regular verse lines, clauses of 5 or 7
    /// characters, clause lengths, valid UTF-8, 8-grams copied from the training text;
    /// the same figures of the real validation poems beside them.
    #[arg(long, num_args = 0..=1, default_missing_value = "20")]
    samples: Option<usize>,
    /// The corpus the run was trained on (its validation poems give the prompts, its
    /// training text the copy measure; split as the run split it) [default: the text
    /// the checkpoint recorded, else data/zh_corpus.txt; another text is refused].
    #[arg(long)]
    data: Option<PathBuf>,
    /// New tokens per sample.
    #[arg(long, default_value_t = tinylm::verse::SAMPLE_TOKENS)]
    max_new_tokens: usize,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// Print one JSON object instead of text: the text's figures, or with --samples
    /// {"text": ..., "form": ...}.
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
    /// bench train only: the precision of the step's products, f32 or bf16 (no auto:
    /// a benchmark names what it measures), as `train --dtype` (default: f32, unlike
    /// train's auto).
    #[arg(long, value_parser = parse_dtype)]
    dtype: Option<tinylm::model::Precision>,
    #[command(flatten)]
    common: Common,
}

/// A prompt file larger than this is refused unread (the model sees at most its
/// context, a few hundred tokens, of it).
const MAX_PROMPT_BYTES: u64 = 1 << 20;

fn main() {
    // Keep freed activation buffers in the heap instead of returning them to the OS:
    // otherwise every training step page-faults its temporaries back in (BENCHMARKS.md).
    tinylm::cpu::tune_glibc_malloc();
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
    if matches!(cli.command, Command::Train(_) | Command::Bench(_)) {
        // A step's peak is reached again every step: return nothing to the OS between.
        tinylm::cpu::keep_heap_between_steps();
    }
    let result = match cli.command {
        Command::Train(a) => cmd_train(*a),
        Command::Sample(a) => cmd_sample(a),
        Command::Eval(a) => cmd_eval(a),
        Command::Bench(a) => cmd_bench(a),
        Command::Tokenizer(a) => cmd_tokenizer(a),
        Command::Plot(a) => tinylm::plot::cmd_plot(&a),
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

fn parse_positions(s: &str) -> Result<tinylm::model::Positions, String> {
    match s {
        "learned" => Ok(tinylm::model::Positions::Learned),
        "rotary" => Ok(tinylm::model::Positions::Rotary),
        _ => Err(format!("expected learned or rotary, got {s:?}")),
    }
}

fn parse_train_dtype(s: &str) -> Result<train::config::Dtype, String> {
    use train::config::Dtype;
    [Dtype::Auto, Dtype::F32, Dtype::Bf16]
        .into_iter()
        .find(|p| p.name() == s)
        .ok_or_else(|| format!("expected auto, f32 or bf16, got {s:?}"))
}

fn parse_dtype(s: &str) -> Result<tinylm::model::Precision, String> {
    use tinylm::model::Precision;
    [Precision::F32, Precision::Bf16]
        .into_iter()
        .find(|p| p.name() == s)
        .ok_or_else(|| format!("expected f32 or bf16, got {s:?}"))
}

fn parse_optimizer(s: &str) -> Result<train::config::UpdateRule, String> {
    match s {
        "adamw" => Ok(train::config::UpdateRule::AdamW),
        "muon" => Ok(train::config::UpdateRule::Muon),
        _ => Err(format!("expected adamw or muon, got {s:?}")),
    }
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

fn train_request(a: &TrainArgs) -> train::setup::TrainRequest {
    train::setup::TrainRequest {
        data: a.data.clone(),
        out: a.out.clone(),
        preset: a.preset.clone(),
        tokenizer: a.tokenizer.clone(),
        config_file: a.config.clone(),
        resume: a.resume.clone(),
        overrides: train::setup::Overrides {
            max_steps: a.max_steps,
            time_budget_s: a.time_budget,
            seed: a.seed,
            n_layer: a.layers,
            n_head: a.heads,
            n_embd: a.width,
            block_size: a.context,
            positions: a.positions,
            batch_size: a.batch_size,
            grad_accum: a.grad_accum,
            lr: a.lr,
            min_lr: a.min_lr,
            warmup_steps: a.warmup,
            weight_decay: a.weight_decay,
            grad_clip: a.grad_clip,
            optimizer: a.optimizer,
            dtype: a.dtype,
            eval_interval: a.eval_interval,
            eval_batches: a.eval_batches,
            log_interval: a.log_interval,
            checkpoint_interval: a.checkpoint_interval,
            max_bad_steps: a.max_bad_steps,
        },
        stamp: timestamp(),
    }
}

fn cmd_train(a: TrainArgs) -> anyhow::Result<()> {
    if let Some(seed) = a.seed {
        tinylm::limits::check_train_seed(seed)?;
    }
    tinylm::limits::check_range(
        "sample_tokens",
        a.sample_tokens as f64,
        &a.sample_tokens.to_string(),
    )?;
    tinylm::limits::check_range(
        "form_samples",
        a.form_samples as f64,
        &a.form_samples.to_string(),
    )?;
    let device = setup(&a.common)?;
    let p = train::setup::prepare(&train_request(&a), &device)?;
    let (config, corpus, tokenizer) = (&p.config, &p.corpus, &p.tokenizer);
    for note in &p.notes {
        println!("{note}");
    }
    let config_toml = toml::to_string_pretty(config)?;
    println!("run directory: {}", p.run_dir.display());
    println!(
        "corpus {}: {} training tokens ({} poems), {} validation tokens ({} poems); tokenizer {} ({:.2} bytes/token)",
        p.corpus_record.path.display(),
        corpus.train.len(),
        corpus.train_docs,
        corpus.val.len(),
        corpus.val_docs,
        tokenizer.describe(),
        p.text_bytes as f64 / (corpus.train.len() + corpus.val.len()).max(1) as f64
    );
    println!(
        "model: {} parameters; {} tokens per step; threads {}",
        config.model.num_params(),
        config.tokens_per_step(),
        tinylm::device::threads()
    );
    println!(
        "memory: about {}{}",
        p.memory,
        train::memory::available_bytes()
            .map(|b| format!(", of {} available", train::memory::human(b)))
            .unwrap_or_default()
    );
    println!("config:\n{config_toml}");

    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        let release = p.lock.releaser();
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
        run_dir: p.run_dir.clone(),
        device: device.clone(),
        stop,
        progress: !a.no_progress,
        stop_at_step: None,
        corpus: Some(p.corpus_record.clone()),
    };
    let summary = train::run(config, corpus, tokenizer, &opts, p.resume)?;
    println!(
        "{} after {} steps in {:.1} s ({:.0} tok/s): val loss {:.4}, {:.3} bits/byte, {:.3} bits/char{}",
        if summary.interrupted { "interrupted" } else { "done" },
        summary.steps,
        summary.elapsed_s,
        summary.tokens_per_s,
        summary.final_val.loss,
        summary.final_val.bits_per_byte,
        summary.final_val.bits_per_char,
        if summary.final_val_step == summary.steps {
            String::new()
        } else {
            format!(" (its last evaluation, at step {})", summary.final_val_step)
        }
    );
    println!("checkpoint: {}", summary.last_checkpoint.display());
    if summary.interrupted {
        println!("resume with: tinylm train --resume {}", p.run_dir.display());
        return Ok(());
    }
    if a.sample_tokens == 0 && a.form_samples == 0 {
        return Ok(());
    }
    let m = train::load_model(&p.run_dir, &device)?;
    let o = SamplingOptions::default();
    // The first validation poem's title and author: the end poem's prompt. None when the
    // text holds no poem (then there is nothing to prompt the form report with either).
    let first_poem = tinylm::verse::prompts_and_bodies(&p.split.val, 1)
        .0
        .into_iter()
        .next();
    if a.sample_tokens > 0 {
        // A poem as a reader would ask for one: a title and an author (of a poem the
        // model never saw), continued until the poem ends.
        let prompt = first_poem.clone().unwrap_or_else(|| b"\n".to_vec());
        println!(
            "--- a poem from the best checkpoint ({}, step {}; temperature {}, top-p {}, \
             min-p {}, repetition penalty {}; the title and author are a validation \
             poem's) ---",
            m.dir.display(),
            m.state.step,
            o.temperature,
            o.top_p,
            o.min_p,
            o.repetition_penalty
        );
        print!("{}", String::from_utf8_lossy(&prompt));
        stream_sample(
            &m.model,
            tokenizer,
            &prompt,
            a.sample_tokens,
            &o,
            true,
            true,
            &device,
        )?;
        println!("---");
    }
    if a.form_samples > 0 && first_poem.is_none() {
        // Text that is not verse (no title, author and body lines): nothing to prompt with.
        println!("form report skipped: the validation text holds no poem to prompt with");
    } else if a.form_samples > 0 {
        let rep = tinylm::verse::form_report_for_split(
            &m.model,
            tokenizer,
            &p.split,
            a.form_samples,
            tinylm::verse::SAMPLE_TOKENS,
            &o,
            &device,
        )?;
        println!("{rep}");
        train::append_form_metrics(&p.run_dir, m.state.step, &rep)?;
    }
    Ok(())
}

/// Generates and prints text as it comes, never splitting a UTF-8 sequence; with
/// `one_poem`, stops at the blank line that ends a poem.
#[allow(clippy::too_many_arguments)]
fn stream_sample(
    model: &tinylm::model::Gpt,
    tokenizer: &Tokenizer,
    prompt: &[u8],
    max_new: usize,
    o: &SamplingOptions,
    use_cache: bool,
    one_poem: bool,
    device: &candle_core::Device,
) -> anyhow::Result<()> {
    let ids = tokenizer.encode(prompt)?;
    let mut dec = StreamDecoder::new();
    let mut out = std::io::stdout().lock();
    let mut write_err = None;
    let mut tail = prompt.to_vec();
    let mut body_started = false;
    tinylm::sample::generate_until(model, &ids, max_new, o, use_cache, device, |id| {
        let bytes = tokenizer.token_bytes(id);
        let text = dec.push(&bytes);
        if let Err(e) = out.write_all(text.as_bytes()).and_then(|_| out.flush()) {
            write_err.get_or_insert(e);
        }
        tail.extend_from_slice(&bytes);
        // A blank line ends the poem once its body has begun: a model that answers the
        // author line with an empty line has not written a poem yet.
        body_started |= bytes.iter().any(|b| !b.is_ascii_whitespace());
        let ended = tail.ends_with(b"\n\n") || tail.ends_with(b"\r\n\r\n");
        if one_poem && body_started && ended {
            std::ops::ControlFlow::Break(())
        } else {
            std::ops::ControlFlow::Continue(())
        }
    })?;
    write!(out, "{}", dec.finish())?;
    if !tail.ends_with(b"\n") {
        writeln!(out)?;
    }
    if let Some(e) = write_err {
        return Err(e.into());
    }
    Ok(())
}

fn load_model(
    path: &Path,
    device: &candle_core::Device,
) -> anyhow::Result<(tinylm::model::Gpt, Tokenizer)> {
    let m = train::load_model(path, device)?;
    Ok((m.model, m.tokenizer))
}

fn cmd_tokenizer(cmd: TokenizerCmd) -> anyhow::Result<()> {
    match cmd {
        TokenizerCmd::Train {
            data,
            vocab_size,
            out,
            han_piece,
            force,
        } => {
            use tinylm::limits::check_range;
            check_range("bpe_vocab_size", vocab_size as f64, &vocab_size.to_string())?;
            check_range("han_piece", han_piece as f64, &han_piece.to_string())?;
            tinylm::tokenizer::check_out_path(&out, force)?;
            let text = read_corpus(&data)?;
            let text = std::str::from_utf8(&text).map_err(|e| {
                anyhow::anyhow!(
                    "{} is not UTF-8 (first bad byte at offset {}): a BPE is trained on UTF-8 text",
                    data.display(),
                    e.valid_up_to()
                )
            })?;
            let mut opts = tinylm::tokenizer::bpe::BpeTrainOptions::new(vocab_size);
            opts.han_piece = han_piece;
            let t0 = std::time::Instant::now();
            let bpe = tinylm::tokenizer::bpe::train_bpe_from_text(text, &opts)?;
            checkpoint::write_atomic(&out, bpe.to_json()?.as_bytes())?;
            let tok = Tokenizer::Bpe(bpe);
            let stats = tinylm::tokenizer::stats::stats(&tok, text.as_bytes())?;
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
    use tinylm::limits::check_range;
    a.sampling.options(0)?;
    check_range(
        "num_samples",
        a.num_samples as f64,
        &a.num_samples.to_string(),
    )?;
    check_range(
        "max_new_tokens",
        a.max_new_tokens as f64,
        &a.max_new_tokens.to_string(),
    )?;
    let prompt = match &a.prompt_file {
        Some(p) => tinylm::data::read_input(p, "prompt file", MAX_PROMPT_BYTES)?,
        None => a.prompt.clone().into_bytes(),
    };
    let device = setup(&a.common)?;
    let (model, tokenizer) = load_model(&a.checkpoint, &device)?;
    for i in 0..a.num_samples {
        let o = a.sampling.options(i)?;
        if a.num_samples > 1 {
            println!("--- sample {} ---", i + 1);
        }
        print!("{}", String::from_utf8_lossy(&prompt));
        // An empty prompt starts a new poem: a line break in this tokenizer's ids.
        let prompt: &[u8] = if prompt.is_empty() { b"\n" } else { &prompt };
        stream_sample(
            &model,
            &tokenizer,
            prompt,
            a.max_new_tokens,
            &o,
            !a.no_cache,
            a.poem,
            &device,
        )?;
    }
    Ok(())
}

fn cmd_eval(a: EvalArgs) -> anyhow::Result<()> {
    use tinylm::limits::check_range;
    check_range(
        "eval_batch_size",
        a.batch_size as f64,
        &a.batch_size.to_string(),
    )?;
    anyhow::ensure!(
        a.text.is_some() || a.samples.is_some(),
        "give --text FILE (score a text), --samples [N] (measure the form of samples), or both"
    );
    if let Some(n) = a.samples {
        check_range("form_samples", n as f64, &n.to_string())?;
        check_range(
            "max_new_tokens",
            a.max_new_tokens as f64,
            &a.max_new_tokens.to_string(),
        )?;
    }
    let sampling = a.sampling.options(0)?;
    let device = setup(&a.common)?;
    let m = train::load_model(&a.checkpoint, &device)?;
    let text_report = match &a.text {
        None => None,
        Some(path) => {
            let text = tinylm::data::read_input(path, "text", tinylm::data::input_limit())?;
            let tokens = m.tokenizer.encode(&text)?;
            Some(tinylm::eval::evaluate_stream(
                &m.model,
                &m.tokenizer,
                &tokens,
                a.batch_size,
                &device,
            )?)
        }
    };
    let form = match a.samples {
        None => None,
        Some(n) => {
            let (_, corpus) = train::setup::read_recorded_corpus(
                a.data.as_deref(),
                Some((&m.dir, m.state.corpus.as_ref())),
            )?;
            let c = &m.state.config;
            let split = tinylm::data::split_text(&corpus, c.val_fraction, c.seed)?;
            Some(tinylm::verse::form_report_for_split(
                &m.model,
                &m.tokenizer,
                &split,
                n,
                a.max_new_tokens,
                &sampling,
                &device,
            )?)
        }
    };
    if a.json {
        match (&form, &text_report) {
            (None, Some(rep)) => println!("{}", serde_json::to_string(rep)?),
            _ => println!(
                "{}",
                serde_json::json!({ "text": text_report, "form": form })
            ),
        }
        return Ok(());
    }
    if let (Some(rep), Some(path)) = (&text_report, &a.text) {
        println!(
            "{}: {} tokens scored, after the first (which has no prediction): {} bytes, {} characters ({:.2} bytes/token)\nloss {:.4} nats/token | {:.4} bits/byte | {:.4} bits/char | perplexity {:.3}",
            path.display(),
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
    if let Some(form) = &form {
        println!("{form}");
    }
    Ok(())
}

fn cmd_bench(a: BenchCmd) -> anyhow::Result<()> {
    setup(&a.common)?;
    anyhow::ensure!(
        a.dtype.is_none() || !matches!(a.what.as_str(), "loss" | "attention"),
        "--dtype is an option of bench train only (the loss bench measures its 16-bit cases \
         by name)"
    );
    let args = tinylm::bench::BenchArgs {
        json: a.json,
        filter: a.filter,
        quick: a.quick,
        dtype: a.dtype.unwrap_or_default(),
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
