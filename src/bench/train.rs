//! `tinylm bench train`: whole training steps of the `bench-ref`, `default`, `bench-8l`
//! and `bench-gpt2s` presets, timed by phase, with MFU against the matmul rate measured
//! in the same run and the growth of peak resident memory (as
//! `benches/torch_train.py` measures PyTorch's steps of the same shapes). With several
//! presets selected, each runs in a child process of its own, so that one preset's peak
//! memory is not hidden by the heap the previous one left behind.

use super::{median, BenchArgs};
use crate::model::Precision;
use crate::train::config::TrainConfig;
use crate::train::Trainer;
use candle_core::Device;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct Record {
    case: String,
    preset: String,
    /// The shape measured (B, T, V as the step ran them) and its parameter count, to
    /// be checked against PyTorch's model.
    batch_size: usize,
    block_size: usize,
    vocab_size: usize,
    params: usize,
    warmup: usize,
    reps: usize,
    tokens_per_s: f64,
    median_ms: f64,
    forward_ms: f64,
    backward_ms: f64,
    optimizer_ms: f64,
    mfu: f64,
    peak_rss_bytes: u64,
    threads: usize,
    /// The best measured matmul rate (MFU's ceiling unless `ceiling_raised`).
    matmul_gflops: f64,
    /// The median step ran faster than every measurement: MFU is 1 against its own rate.
    #[serde(default)]
    ceiling_raised: bool,
    /// The precision the products ran in (bf16 asked on a CPU without AVX512-BF16
    /// runs, and says, f32); MFU's ceiling is that precision's rate.
    #[serde(default)]
    dtype: Precision,
}

/// (VmRSS, VmHWM) of this process in bytes.
fn rss() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .map(|kb| kb * 1024)
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Resets the kernel's peak-RSS counter; returns the current RSS (the baseline).
fn reset_peak_rss() -> u64 {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    rss().0
}

/// The presets `bench train` measures, with their (warm-up, timed) step counts: the
/// larger shapes take seconds a step on 2 cores, so fewer of them.
const PRESETS: &[(&str, usize, usize)] = &[
    ("bench-ref", 2, 7),
    ("default", 2, 7),
    ("bench-8l", 1, 5),
    ("bench-gpt2s", 1, 3),
];

/// A preset's config with the model it really trains: a BPE preset's vocabulary is
/// its tokenizer's size (which `train` would learn from the corpus first).
pub fn preset_as_trained(preset: &str) -> anyhow::Result<TrainConfig> {
    let mut config = TrainConfig::preset(preset)?;
    if let Some(opts) = crate::train::setup::parse_bpe_spec(&config.tokenizer)? {
        config.model.vocab_size = opts.vocab_size;
    }
    Ok(config)
}

/// Token ids without a tokenizer: pairs of the tiny corpus's bytes folded into `v`
/// ids, ~20k of them. A step's time and FLOPs do not depend on which ids they are.
pub fn synthetic_tokens(v: usize) -> anyhow::Result<Vec<u32>> {
    let text = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/data/zh_tiny.txt"))?;
    Ok(text
        .windows(2)
        .map(|w| ((w[0] as usize * 256 + w[1] as usize) % v) as u32)
        .collect())
}

/// One preset's steps, measured in this process.
fn measure(preset: &str, args: &BenchArgs, device: &Device) -> anyhow::Result<Record> {
    let quick = args.quick;
    let mut config = preset_as_trained(preset)?;
    config.dtype = args.dtype.into();
    if quick {
        config.model.n_layer = 1;
        config.model.block_size = 64;
        config.batch_size = 2;
    }
    let v = config.model.vocab_size;
    let tokens = synthetic_tokens(v)?;
    let mut trainer = Trainer::new(&config, device)?;
    let (warmup, reps) = match PRESETS.iter().find(|p| p.0 == preset) {
        _ if quick => (1, 2),
        Some(&(_, w, r)) => (w, r),
        None => (2, 7),
    };
    // Baseline after the model and optimizer exist, before any step: the growth
    // then counts activations, gradients and temporaries, as PyTorch's figure does.
    let base = reset_peak_rss();
    for _ in 0..warmup {
        trainer.step(&tokens, config.lr)?;
    }
    let mut totals = Vec::new();
    let (mut fwd, mut bwd, mut opt) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..reps {
        let t = std::time::Instant::now();
        let out = trainer.step(&tokens, config.lr)?;
        totals.push(t.elapsed().as_secs_f64() * 1e3);
        fwd.push(out.times.forward * 1e3);
        bwd.push(out.times.backward * 1e3);
        opt.push(out.times.optimizer * 1e3);
    }
    let peak = rss().1.saturating_sub(base);
    let ms = median(&mut totals);
    let tokens_per_s = config.tokens_per_step() as f64 / (ms / 1e3);
    // Measured after the steps and the peak: its freed buffers would otherwise stay in
    // the heap and count in the baseline the peak is taken from.
    let rows = config.batch_size * config.model.block_size;
    let mut ceiling =
        crate::device::Ceiling::measure(device, &config.model, rows, trainer.products())?;
    let mfu = ceiling.mfu(tokens_per_s);
    Ok(Record {
        case: "gpt_step".to_string(),
        preset: preset.to_string(),
        batch_size: config.batch_size,
        block_size: config.model.block_size,
        vocab_size: v,
        params: config.model.num_params(),
        warmup,
        reps,
        tokens_per_s,
        median_ms: ms,
        forward_ms: median(&mut fwd),
        backward_ms: median(&mut bwd),
        optimizer_ms: median(&mut opt),
        mfu,
        peak_rss_bytes: peak,
        threads: crate::device::threads(),
        matmul_gflops: ceiling.measured() / 1e9,
        ceiling_raised: ceiling.raised(),
        dtype: trainer.products(),
    })
}

/// Runs `tinylm bench train --filter <preset> --json` in a child process.
fn measure_in_child(preset: &str, args: &BenchArgs) -> anyhow::Result<Record> {
    let exe = std::env::current_exe()?;
    let mut cmd = std::process::Command::new(exe);
    cmd.args(["bench", "train", "--json", "--filter", preset])
        .args(["--threads", &crate::device::threads().to_string()]);
    if args.dtype == Precision::Bf16 {
        cmd.args(["--dtype", "bf16"]);
    }
    if args.quick {
        cmd.arg("--quick");
    }
    let out = cmd.output()?;
    anyhow::ensure!(
        out.status.success(),
        "bench train for {preset} failed: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let mut records: Vec<Record> = serde_json::from_slice(&out.stdout)?;
    records
        .pop()
        .ok_or_else(|| anyhow::anyhow!("bench train for {preset} printed no record"))
}

/// `--filter`: the presets whose name contains it, or all when the case name
/// `gpt_step` contains it.
fn selects(filter: &str, preset: &str) -> bool {
    preset.contains(filter) || "gpt_step".contains(filter)
}

pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
    let device = Device::Cpu;
    // bench train runs the native step on the CPU.
    if let Some(note) = crate::train::dtype_note(args.dtype.into(), true) {
        eprintln!("{note}");
    }
    let names: Vec<String> = PRESETS.iter().map(|p| p.0.to_string()).collect();
    super::check_filter(args, &names, selects)?;
    let presets: Vec<&str> = PRESETS
        .iter()
        .map(|p| p.0)
        .filter(|p| args.filter.as_deref().is_none_or(|f| selects(f, p)))
        .collect();
    // Only the `tinylm` binary can be re-invoked as `bench train`.
    let is_cli = std::env::current_exe()
        .ok()
        .and_then(|p| p.file_stem().map(|s| s == "tinylm"))
        .unwrap_or(false);
    let records = presets
        .iter()
        .map(|p| {
            if presets.len() > 1 && is_cli {
                measure_in_child(p, args)
            } else {
                measure(p, args, &device)
            }
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&records)?);
    } else {
        println!(
            "{} threads, {} products; MFU (PaLM's convention, the causal half of attention, tinylm train \
             --help) against the better of candle's 1024³ matmul and the step's own GEMM on \
             its MLP product in the step's precision, measured (ceiling column; * = the step beat it, MFU is against \
             the step's own rate)",
            crate::device::threads(),
            crate::train::config::Dtype::from(args.dtype)
                .products(true)
                .name()
        );
        println!(
            "{:<10} {:<12} {:>16} {:>11} {:>10} {:>10} {:>9} {:>9} {:>9} {:>7} {:>10} {:>12}",
            "case",
            "preset",
            "B x T, V",
            "params",
            "tok/s",
            "step ms",
            "fwd ms",
            "bwd ms",
            "opt ms",
            "MFU",
            "peak RSS",
            "ceiling"
        );
        for r in &records {
            println!(
                "{:<10} {:<12} {:>16} {:>11} {:>10.0} {:>10.1} {:>9.1} {:>9.1} {:>9.1} {:>6.1}% {:>7.0} MB {:>6.0} GFLOP/s{}",
                r.case,
                r.preset,
                format!("{} x {}, {}", r.batch_size, r.block_size, r.vocab_size),
                r.params,
                r.tokens_per_s,
                r.median_ms,
                r.forward_ms,
                r.backward_ms,
                r.optimizer_ms,
                100.0 * r.mfu,
                r.peak_rss_bytes as f64 / 1e6,
                r.matmul_gflops,
                if r.ceiling_raised { " *" } else { "" }
            );
        }
    }
    Ok(())
}
