//! How much memory a training run needs, estimated before it starts, so that a
//! configuration too large for the machine is refused with the numbers instead of
//! being killed by the kernel minutes (or hours) later.
//!
//! Everything is computed in f64 from the config, so that no untrusted number (a
//! config file, a checkpoint's state) can overflow an integer or size an allocation.
//!
//! The formula, in f32 values (4 bytes each), with P parameters and N = B·T tokens a
//! micro-batch:
//!
//! ```text
//! P           = V·C + T·C + L·(12·C² + 13·C) + 2·C
//! weights     = P,  gradients = P,  AdamW moments = 2·P
//!             (Muon: 2·P - 12·L·C² (one buffer per matrix value) + threads·13·C², the
//!             Newton–Schulz buffers of the (4C, C) matrix each thread works on)
//! checkpoint  = 3·P          (serialised model + moments, while a save runs)
//! corpus      = 5 bytes per token (the text and its u32 ids)
//! activations, native CPU step (`model::native`, what `tinylm train` runs on a CPU):
//!             = N·(L·(20·C + H + 4) + 12·C) + 2·rows·V,  rows = min(N, max(8, 2^24/V))
//!             (bf16 products: 16.5·C a layer, plus both factors of the largest product
//!             packed as bf16)
//! activations, candle's graph (CUDA, f64, the reference kernels):
//!             = N·(L·(48·C + 12·H·T) + 4·V + 4·C)
//! ```
//!
//! The native step keeps 17·N·C + (4 + H)·N per layer for its backward (block input,
//! LayerNorm outputs and statistics, q/k/v, attention output and log-sum-exp, the
//! merged heads, the residual, the 4·C MLP layer before and after GELU), plus the
//! backward's transients (the MLP's 8·N·C gradients, the block's d(out)) and the head's
//! [chunk, V] logits (about 2^24 values, at least 8 rows: `loss::linear::chunk_rows`).
//! Rounded up to 20·C per layer and 12·C per token, it covers the peak RSS of real runs
//! (under bf16 products the LayerNorm outputs, the merged heads and GELU's output are
//! bf16: 3.5·C less; the test `native_estimate_covers_the_measured_peaks`;
//! BENCHMARKS.md, "Measurements behind the code"). Evaluation and sampling run on a
//! `Gpt::frozen` view that records no graph, so they stay below the step. The graph formula is what
//! autograd keeps with materialised attention (both sides of every op and its
//! gradient), fitted to the composed reference kernels (BENCHMARKS.md). Plus a
//! fixed 64 MiB for the program, the matmul benchmark and buffers.

use super::config::TrainConfig;

/// Estimated bytes, by what holds them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MemoryEstimate {
    pub params: f64,
    /// Weights + gradients + optimizer state + checkpoint buffers.
    pub state_bytes: f64,
    pub activation_bytes: f64,
    pub corpus_bytes: f64,
    pub fixed_bytes: f64,
}

impl MemoryEstimate {
    pub fn total(&self) -> f64 {
        self.state_bytes + self.activation_bytes + self.corpus_bytes + self.fixed_bytes
    }
}

impl std::fmt::Display for MemoryEstimate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({:.3e} parameters: {} for weights, gradients, optimizer state and checkpoint \
             buffers; {} activations; {} corpus; {} fixed)",
            human(self.total()),
            self.params,
            human(self.state_bytes),
            human(self.activation_bytes),
            human(self.corpus_bytes),
            human(self.fixed_bytes)
        )
    }
}

/// Bytes as "12.3 MiB".
pub fn human(bytes: f64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut v = bytes;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < units.len() {
        v /= 1024.0;
        i += 1;
    }
    if !v.is_finite() || v >= 1024.0 {
        return format!("{bytes:.3e} B");
    }
    format!("{v:.1} {}", units[i])
}

/// Which training step a run takes (see [`crate::model::native::supported`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepKind {
    /// The native CPU step: raw f32 buffers, no graph.
    Native,
    /// candle's autograd graph (CUDA, f64, the reference kernels).
    Graph,
}

/// The estimate for training `config` on a corpus of `corpus_tokens` tokens.
pub fn estimate(config: &TrainConfig, corpus_tokens: usize, step: StepKind) -> MemoryEstimate {
    let m = &config.model;
    let (v, t, l, h, c) = (
        m.vocab_size as f64,
        m.block_size as f64,
        m.n_layer as f64,
        m.n_head as f64,
        m.n_embd as f64,
    );
    let b = config.batch_size as f64;
    let wpe = match m.positions {
        crate::model::Positions::Learned => t * c,
        crate::model::Positions::Rotary => 0.0,
    };
    let p = v * c + wpe + l * (12.0 * c * c + 13.0 * c) + 2.0 * c;
    let f = 4.0;
    let optimizer = match config.optimizer {
        super::config::UpdateRule::AdamW => 2.0 * p,
        super::config::UpdateRule::Muon => {
            let threads = rayon::current_num_threads() as f64;
            2.0 * p - l * 12.0 * c * c + threads * 13.0 * c * c
        }
    };
    MemoryEstimate {
        params: p,
        state_bytes: f * (p + p + optimizer + 3.0 * p),
        activation_bytes: match step {
            StepKind::Native => {
                let n = b * t;
                // The head's [rows, V] chunk, as `loss::linear::chunk_rows` sizes it: about
                // 2^24 values, but never fewer than 8 rows.
                let chunk = ((16_777_216.0 / v).floor().max(8.0) / 8.0).floor() * 8.0;
                // bf16 products pack both factors as bf16 (2 bytes a value) while
                // they run: at most an MLP product ([N, 4C] with [4C, C], or [4C, N]
                // with [N, C]), or the head's Wᵀ with a chunk's rows.
                // They also store the activations that only feed products (the two
                // LayerNorms' outputs, attention's heads side by side, GELU's output:
                // 7C of the ~17C a layer keeps a row, within the 20C allowed for it)
                // as bf16, half the bytes: 3.5C less.
                let (packed, per_layer) = match config.dtype.products(true) {
                    crate::model::Precision::F32 => (0.0, 20.0 * c),
                    crate::model::Precision::Bf16 => {
                        let rows = chunk.min(n);
                        let mlp = 4.0 * n * c + (n * c).max(4.0 * c * c);
                        (2.0 * mlp.max(rows * v + v * c + rows * c), 16.5 * c)
                    }
                };
                f * (n * (l * (per_layer + h + 4.0) + 12.0 * c) + 2.0 * chunk.min(n) * v) + packed
            }
            StepKind::Graph => f * b * t * (l * (48.0 * c + 12.0 * h * t) + 4.0 * v + 4.0 * c),
        },
        // Plus the evaluation windows (one usize each).
        corpus_bytes: 5.0 * corpus_tokens as f64
            + 8.0 * config.eval_batches as f64 * config.batch_size as f64,
        fixed_bytes: 64.0 * 1024.0 * 1024.0,
    }
}

/// Memory the kernel says is available for new allocations (MemAvailable in
/// /proc/meminfo), if it says.
pub fn available_bytes() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    parse_meminfo_available(&text)
}

fn parse_meminfo_available(text: &str) -> Option<f64> {
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024.0)
}

/// Refuses a configuration whose estimate exceeds `available` bytes (or whose counts
/// overflow the integer arithmetic training does with them); returns the estimate.
pub fn check(
    config: &TrainConfig,
    corpus_tokens: usize,
    step: StepKind,
    available: Option<f64>,
) -> anyhow::Result<MemoryEstimate> {
    let est = estimate(config, corpus_tokens, step);
    // Training multiplies these as usize: a hostile config must not overflow them.
    let m = &config.model;
    let products = [
        config
            .batch_size
            .checked_mul(config.grad_accum)
            .and_then(|x| x.checked_mul(m.block_size)),
        config.eval_batches.checked_mul(config.batch_size),
        m.n_layer.checked_mul(12).and_then(|x| x.checked_add(4)),
    ];
    // Counts a step loop adds to or compares with: far below any overflow.
    let limit = 1usize << 52;
    for (name, v) in [
        ("warmup_steps", config.warmup_steps),
        ("max_steps", config.max_steps.unwrap_or(0)),
        ("eval_interval", config.eval_interval),
        ("log_interval", config.log_interval),
        ("checkpoint_interval", config.checkpoint_interval),
        ("keep_last", config.keep_last),
        ("max_bad_steps", config.max_bad_steps),
    ] {
        anyhow::ensure!(v <= limit, "{name} {v} is implausibly large");
    }
    let fits_usize = products.iter().all(|p| p.is_some());
    if let Some(avail) = available {
        anyhow::ensure!(
            fits_usize && est.total() <= avail,
            "this configuration needs about {est}, but only {} of memory is available: \
             reduce --batch-size, --context, --width or --layers",
            human(avail)
        );
    } else {
        anyhow::ensure!(
            fits_usize,
            "this configuration needs about {est}: its sizes overflow"
        );
    }
    Ok(est)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Precision;
    use crate::train::config::Dtype;

    #[test]
    fn estimate_counts_parameters_exactly() {
        for preset in super::super::config::PRESETS {
            let c = TrainConfig::preset(preset).unwrap();
            let e = estimate(&c, 0, StepKind::Native);
            println!("{preset}: {e}");
            assert_eq!(e.params, c.model.num_params() as f64);
        }
    }

    #[test]
    fn huge_configs_are_refused_with_the_estimate() {
        let g = StepKind::Graph;
        let mut c = TrainConfig::preset("tiny").unwrap();
        // The figures below are f32 products' (`auto` is bf16 on some CPUs).
        c.dtype = Dtype::F32;
        assert!(check(&c, 1000, g, Some(1e9)).is_ok());
        c.model.n_embd = 1 << 20;
        c.model.n_head = 1;
        let e = check(&c, 1000, g, Some(16e9)).unwrap_err().to_string();
        println!("{e}");
        assert!(e.contains("needs about 672.2 TiB") && e.contains("14.9 GiB"));
        let e = check(&c, 1000, StepKind::Native, Some(16e9))
            .unwrap_err()
            .to_string();
        println!("{e}");
        assert!(e.contains("needs about 672.1 TiB") && e.contains("14.9 GiB"));
        // Overflowing sizes are refused rather than wrapped (and with no /proc too).
        c.batch_size = usize::MAX / 2;
        assert!(check(&c, 1000, g, Some(f64::INFINITY)).is_err());
        assert!(check(&c, 1000, g, None).is_err());
        let mut c = TrainConfig::preset("tiny").unwrap();
        c.warmup_steps = usize::MAX;
        assert!(check(&c, 1000, g, None)
            .unwrap_err()
            .to_string()
            .contains("warmup_steps"));
    }

    /// The native estimate against the peak RSS of 3-step runs (BENCHMARKS.md,
    /// "Measurements behind the code"; bytes corpus of 15,905,751 + 412,588 tokens; bpe:8192 corpus of 4,732,843 + 122,885
    /// tokens): never below the measurement, at most 1.6x it. The bf16 runs' only where
    /// this CPU runs bf16 products (elsewhere a bf16 config is estimated, and runs, as
    /// f32).
    #[test]
    fn native_estimate_covers_the_measured_peaks() {
        let mib = 1024.0 * 1024.0;
        let bytes_corpus = 15_905_751 + 412_588;
        let (f32, bf16) = (Dtype::F32, Dtype::Bf16);
        for ((l, c, h, t, b, v), dtype, measured_mib) in [
            ((4, 256, 4, 256, 16, 256), f32, 464.0),
            ((2, 512, 8, 128, 8, 256), f32, 279.0),
            ((2, 128, 8, 256, 8, 256), f32, 141.0),
            ((6, 192, 2, 64, 16, 256), f32, 220.0),
            ((4, 256, 4, 512, 32, 256), f32, 1443.0),
            ((8, 512, 8, 256, 32, 256), f32, 2928.0),
            ((4, 256, 4, 256, 16, 8192), f32, 663.0),
            ((4, 256, 4, 512, 32, 256), bf16, 1165.0),
            ((8, 512, 8, 256, 32, 256), bf16, 2356.0),
            ((2, 512, 8, 128, 8, 256), bf16, 284.0),
        ] {
            if dtype == Dtype::Bf16 && dtype.products(true) != Precision::Bf16 {
                continue;
            }
            let mut cfg = TrainConfig::preset("default").unwrap();
            cfg.model.n_layer = l;
            cfg.model.n_embd = c;
            cfg.model.n_head = h;
            cfg.model.block_size = t;
            cfg.model.vocab_size = v;
            cfg.batch_size = b;
            cfg.eval_batches = 4;
            cfg.dtype = dtype;
            // The peaks were measured with learned positions.
            cfg.model.positions = crate::model::Positions::Learned;
            let tokens = if v == 256 {
                bytes_corpus
            } else {
                4_732_843 + 122_885
            };
            let est = estimate(&cfg, tokens, StepKind::Native).total() / mib;
            let ratio = est / measured_mib;
            println!(
                "{:?} {}: estimated {est:.0} MiB, measured {measured_mib} MiB, ratio {ratio:.2}",
                (l, c, h, t, b, v),
                dtype.name()
            );
            assert!((1.0..=1.6).contains(&ratio), "ratio {ratio}");
        }
        // Past V = 2^21 the head's chunk stays at 8 rows, so it outgrows 2^24 values.
        let mut cfg = TrainConfig::preset("default").unwrap();
        cfg.model.vocab_size = 1 << 23;
        let e = estimate(&cfg, 0, StepKind::Native);
        assert!(e.activation_bytes >= 4.0 * 2.0 * 8.0 * (1u64 << 23) as f64);
    }

    #[test]
    fn meminfo_is_parsed() {
        let text = "MemTotal:       24000000 kB\nMemFree:  100 kB\nMemAvailable:   20000000 kB\n";
        assert_eq!(parse_meminfo_available(text), Some(20000000.0 * 1024.0));
        assert_eq!(parse_meminfo_available("MemTotal: 1 kB\n"), None);
    }
}
