//! Typed training configuration and the named presets.

use crate::limits::{check_range, MAX_TOKENS_PER_STEP};
use crate::model::{GptConfig, Precision};
use serde::{Deserialize, Serialize};

/// The update rule of the matrices of linear layers (`--optimizer`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UpdateRule {
    /// AdamW, as every other parameter.
    #[default]
    AdamW,
    /// Muon: Nesterov momentum orthogonalised by Newton–Schulz (`train::muon`), at the
    /// same learning rate and decay as AdamW's.
    Muon,
}

/// The precision asked of the step's matrix products (`--dtype`); [`Dtype::products`]
/// says what a run gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    /// bf16 where it is fast (the native CPU step on a CPU with AVX512-BF16), else f32:
    /// every preset's choice.
    Auto,
    /// f32 products; also what a config written before `dtype` existed ran.
    #[default]
    F32,
    /// bf16 products; f32 (with a note) on a CPU without AVX512-BF16, refused on
    /// candle's graph.
    Bf16,
}

impl Dtype {
    /// The name `--dtype` and the config use.
    pub fn name(self) -> &'static str {
        match self {
            Dtype::Auto => "auto",
            Dtype::F32 => "f32",
            Dtype::Bf16 => "bf16",
        }
    }

    /// The precision the products run in, for a run that takes the native CPU step
    /// (`native_step`) or not: bf16 only on the native step where the CPU has
    /// AVX512-BF16 (the portable bf16 kernel is slower than f32's).
    pub fn products(self, native_step: bool) -> Precision {
        self.resolve(native_step, crate::kernels::gemm_bf16::native())
    }

    /// [`Dtype::products`] on a CPU with (`cpu_bf16`) or without AVX512-BF16.
    pub fn resolve(self, native_step: bool, cpu_bf16: bool) -> Precision {
        match self {
            Dtype::Auto | Dtype::Bf16 if native_step && cpu_bf16 => Precision::Bf16,
            _ => Precision::F32,
        }
    }
}

impl From<Precision> for Dtype {
    fn from(p: Precision) -> Self {
        match p {
            Precision::F32 => Dtype::F32,
            Precision::Bf16 => Dtype::Bf16,
        }
    }
}

/// Everything that decides a training run. Stored in the run directory and in every
/// checkpoint; `--resume` takes it from there.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// The `--preset` the run started from: a label for `tinylm plot`'s legend. Absent
    /// from configs written before it was recorded, which still load.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preset: Option<String>,
    pub model: GptConfig,
    /// `bytes`, `bpe:N[,han-piece=K]` (a BPE of N tokens, Han runs cut into pieces of at
    /// most K characters, trained on the training split when the run starts), or the
    /// path of a tokenizer.json. The model's vocabulary follows it.
    pub tokenizer: String,
    /// Sequences per micro-batch (B).
    pub batch_size: usize,
    /// Micro-batches per optimizer step: the step sees batch_size·grad_accum sequences.
    pub grad_accum: usize,
    /// Optimizer steps. `None`: as many as fit in `time_budget_s`, estimated from the
    /// measured step time early in the run and then fixed (the cosine schedule needs a
    /// horizon).
    pub max_steps: Option<usize>,
    /// Wall-clock budget for training in seconds (evaluation included).
    pub time_budget_s: Option<f64>,
    /// Peak learning rate, reached after warmup.
    pub lr: f64,
    /// Floor of the cosine decay.
    pub min_lr: f64,
    /// Linear warmup steps from 0 to `lr`.
    pub warmup_steps: usize,
    /// Decoupled (AdamW) weight decay of matrices; biases, gains and embeddings get none.
    pub weight_decay: f64,
    pub beta1: f64,
    pub beta2: f64,
    /// Global gradient-norm clip; 0 disables.
    pub grad_clip: f64,
    /// The update rule of the matrices of linear layers; everything else is AdamW's.
    /// Absent from configs written before it was a choice (AdamW then).
    #[serde(default)]
    pub optimizer: UpdateRule,
    /// The precision of the step's matrix products (`--dtype`): auto (the presets'),
    /// f32, or bf16 factors with f32 sums where the CPU has AVX512-BF16 (and the
    /// activations that only feed products stored in that bf16). Weights, optimizer
    /// moments, the other activations and the loss stay f32 either way. Absent from
    /// configs written before it was a choice (f32 then).
    #[serde(default)]
    pub dtype: Dtype,
    /// Evaluate on the validation split every this many steps (and at the end).
    pub eval_interval: usize,
    /// Batches of batch_size windows per evaluation.
    pub eval_batches: usize,
    /// Print a progress line every this many steps.
    pub log_interval: usize,
    /// Write a checkpoint every this many steps (and at the end, and on Ctrl-C).
    pub checkpoint_interval: usize,
    /// Checkpoints kept besides the best one.
    pub keep_last: usize,
    /// Fraction of the poems held out for validation.
    pub val_fraction: f64,
    /// Seeds the initialisation, the split and the sampler.
    pub seed: u64,
    /// Consecutive non-finite steps tolerated (each skipped) before the run stops.
    pub max_bad_steps: usize,
}

impl TrainConfig {
    /// A named preset.
    pub fn preset(name: &str) -> anyhow::Result<Self> {
        let base = Self::default_preset();
        let preset = Some(name.to_string());
        Ok(match name {
            "default" => Self { preset, ..base },
            // The reference GPT of the benchmarks (issue 5): the shapes PyTorch is
            // measured on in ../shared/bench/torch_reference.py.
            "bench-ref" => Self {
                model: GptConfig {
                    vocab_size: 256,
                    block_size: 256,
                    n_layer: 4,
                    n_head: 4,
                    n_embd: 256,
                    positions: Default::default(),
                },
                batch_size: 16,
                lr: 1e-3,
                // Its own floor, not the default's: the shapes PyTorch is measured on
                // keep their schedule when the default's rate moves.
                min_lr: 2e-4,
                // PyTorch's side runs AdamW on every parameter.
                optimizer: UpdateRule::AdamW,
                eval_batches: 16,
                tokenizer: "bytes".to_string(),
                preset,
                ..base
            },
            // The benchmarks' larger shapes, with learned positions like
            // bench-ref so that benches/torch_train.py runs the same GPT: how the lead
            // over PyTorch changes with size. Trainable, but 5 minutes is few steps.
            "bench-8l" => Self {
                model: GptConfig {
                    vocab_size: 256,
                    block_size: 512,
                    n_layer: 8,
                    n_head: 8,
                    n_embd: 512,
                    positions: crate::model::Positions::Learned,
                },
                batch_size: 8,
                lr: 1e-3,
                min_lr: 1e-4,
                optimizer: UpdateRule::AdamW,
                eval_batches: 16,
                tokenizer: "bytes".to_string(),
                preset,
                ..base
            },
            // GPT-2 small's body (L 12, C 768, H 12, T 1024) on a BPE of 8192. A step of
            // batch 8 is ~5 TFLOP, minutes on 2 cores: 2 windows a step keeps it near
            // 20 s.
            "bench-gpt2s" => Self {
                model: GptConfig {
                    vocab_size: 8192,
                    block_size: 1024,
                    n_layer: 12,
                    n_head: 12,
                    n_embd: 768,
                    positions: crate::model::Positions::Learned,
                },
                batch_size: 2,
                // nanoGPT's rate for GPT-2 small.
                lr: 6e-4,
                min_lr: 6e-5,
                optimizer: UpdateRule::AdamW,
                eval_batches: 16,
                tokenizer: "bpe:8192".to_string(),
                preset,
                ..base
            },
            // Seconds on 2 cores: for tests and smoke runs.
            "tiny" => Self {
                model: GptConfig {
                    vocab_size: 256,
                    block_size: 64,
                    n_layer: 2,
                    n_head: 2,
                    n_embd: 64,
                    positions: Default::default(),
                },
                batch_size: 8,
                max_steps: Some(200),
                time_budget_s: None,
                lr: 3e-3,
                min_lr: 3e-4,
                warmup_steps: 20,
                eval_interval: 50,
                eval_batches: 4,
                log_interval: 20,
                checkpoint_interval: 100,
                // The tests that train `tiny` assume AdamW; Muon has its own tests.
                optimizer: UpdateRule::AdamW,
                tokenizer: "bytes".to_string(),
                preset,
                ..base
            },
            // For people who will wait: a deeper model and six times the default's
            // budget (its measured figures: BENCHMARKS.md, "Verse").
            "poet" => Self {
                model: GptConfig {
                    n_layer: 6,
                    ..base.model
                },
                time_budget_s: Some(1800.0),
                warmup_steps: 200,
                eval_interval: 500,
                checkpoint_interval: 500,
                preset,
                ..base
            },
            other => anyhow::bail!("unknown preset {other:?} (known: {})", PRESETS.join(", ")),
        })
    }

    /// The preset `tinylm train` uses with no arguments: chosen for about 5 minutes on
    /// 2 cores, on what a reader judges (the form of the verse) as well as on bits per
    /// byte (BENCHMARKS.md, "Verse").
    fn default_preset() -> Self {
        Self {
            preset: None,
            model: GptConfig {
                vocab_size: 256,
                // 256 tokens: a whole poem, title and author included.
                block_size: 256,
                n_layer: 4,
                n_head: 4,
                n_embd: 256,
                // Counting the characters of a line is relative: rotary positions let
                // attention see how far back the last punctuation is.
                positions: crate::model::Positions::Rotary,
            },
            // One Han character per token (the BPE merges bytes only within a
            // character), so a 5-character clause is 5 tokens and the model can count
            // it; pieces of several characters packed more text into a step but left
            // the line's length unknowable.
            tokenizer: "bpe:8192,han-piece=1".to_string(),
            // 4 windows a step: in 5 minutes, more and smaller steps are what taught the
            // model to count a line (BENCHMARKS.md, "Muon on the matrices").
            batch_size: 4,
            grad_accum: 1,
            max_steps: None,
            // The README's promise: `tinylm train` finishes in about 5 minutes.
            time_budget_s: Some(300.0),
            // Muon's updates are scaled to AdamW's size, so one rate serves both; the
            // rate measured best on verse and bits per byte (BENCHMARKS.md, "Muon").
            lr: 5e-3,
            // A tenth of the peak, as in nanoGPT/Chinchilla practice.
            min_lr: 5e-4,
            // Short: a 5-minute run has only a few thousand steps.
            warmup_steps: 100,
            weight_decay: 0.1,
            beta1: 0.9,
            // 0.95 rather than 0.999: steadier for small batches (GPT-3, nanoGPT).
            beta2: 0.95,
            grad_clip: 1.0,
            // Muon on the matrices: each step costs more (Newton–Schulz), but it learns
            // more per step than AdamW (BENCHMARKS.md, "Muon").
            optimizer: UpdateRule::Muon,
            // bf16 products where the CPU has AVX512-BF16: more steps in the same budget
            // and a lower loss at the end (BENCHMARKS.md, "bf16 products", the 5-minute
            // pairs).
            dtype: Dtype::Auto,
            // Three evaluations in a 5-minute run (each costs ~2 s), plus the final one.
            eval_interval: 200,
            // 32 x 4 = 128 windows of 256 tokens (~32k of the ~123k validation tokens);
            // presets with other batches set their own.
            eval_batches: 32,
            log_interval: 10,
            checkpoint_interval: 500,
            keep_last: 2,
            // ~1,800 poems: a validation estimate with small noise, little lost to training.
            val_fraction: 0.025,
            seed: 1337,
            max_bad_steps: 5,
        }
    }

    /// Refuses values outside the documented ranges ([`RANGES`]) with a message that
    /// names the field, before any work.
    pub fn validate(&self) -> anyhow::Result<()> {
        self.model.validate()?;
        let ints = [
            ("batch_size", self.batch_size),
            ("grad_accum", self.grad_accum),
            ("warmup_steps", self.warmup_steps),
            ("eval_interval", self.eval_interval),
            ("eval_batches", self.eval_batches),
            ("log_interval", self.log_interval),
            ("checkpoint_interval", self.checkpoint_interval),
            ("keep_last", self.keep_last),
            ("max_bad_steps", self.max_bad_steps),
        ];
        for (name, v) in ints {
            check_range(name, v as f64, &v.to_string())?;
        }
        if let Some(s) = self.max_steps {
            check_range("max_steps", s as f64, &s.to_string())?;
        }
        if let Some(t) = self.time_budget_s {
            check_range("time_budget_s", t, &t.to_string())?;
        }
        anyhow::ensure!(
            self.max_steps.is_some() || self.time_budget_s.is_some(),
            "give --max-steps or --time-budget (a run needs an end)"
        );
        let floats = [
            ("lr", self.lr),
            ("min_lr", self.min_lr),
            ("weight_decay", self.weight_decay),
            ("beta1", self.beta1),
            ("beta2", self.beta2),
            ("grad_clip", self.grad_clip),
            ("val_fraction", self.val_fraction),
        ];
        for (name, v) in floats {
            check_range(name, v, &v.to_string())?;
        }
        anyhow::ensure!(
            self.min_lr <= self.lr,
            "min_lr ({}) must not exceed lr ({})",
            self.min_lr,
            self.lr
        );
        // Decoupled decay multiplies every matrix by 1 - lr·wd each step: at lr·wd ≥ 1
        // that flips or zeroes the weights.
        anyhow::ensure!(
            self.lr * self.weight_decay < 1.0,
            "lr x weight_decay must be below 1 (it is {}): each step multiplies the \
             weights by 1 - lr x weight_decay",
            self.lr * self.weight_decay
        );
        let tokens = self
            .batch_size
            .checked_mul(self.grad_accum)
            .and_then(|x| x.checked_mul(self.model.block_size));
        anyhow::ensure!(
            tokens.is_some_and(|t| t <= MAX_TOKENS_PER_STEP),
            "batch_size x grad_accum x context = {} x {} x {} tokens a step is more than \
             the {MAX_TOKENS_PER_STEP} allowed",
            self.batch_size,
            self.grad_accum,
            self.model.block_size
        );
        Ok(())
    }

    /// True when `other` trains the same way: equal but for the fields a resume may
    /// change (the end, the bad-step limit, the reporting intervals and the products'
    /// precision).
    pub fn same_training(&self, other: &TrainConfig) -> bool {
        let strip = |c: &TrainConfig| TrainConfig {
            max_steps: None,
            time_budget_s: None,
            max_bad_steps: 1,
            eval_interval: 1,
            log_interval: 1,
            checkpoint_interval: 1,
            dtype: Default::default(),
            ..c.clone()
        };
        strip(self) == strip(other)
    }

    /// Tokens per optimizer step.
    pub fn tokens_per_step(&self) -> usize {
        self.batch_size * self.grad_accum * self.model.block_size
    }

    /// Learning rate at `step` of a run of `horizon` steps: linear warmup, then cosine
    /// decay to `min_lr` at the horizon.
    pub fn lr_at(&self, step: usize, horizon: usize) -> f64 {
        if step < self.warmup_steps {
            return self.warmup_lr(step);
        }
        let span = horizon.saturating_sub(self.warmup_steps).max(1) as f64;
        self.cosine_lr((step - self.warmup_steps) as f64 / span)
    }

    /// Learning rate of a time-budget run: linear warmup over `warmup_steps`, then
    /// cosine decay to `min_lr` over the rest of the budget, by elapsed time
    /// (`warmup_end_s`: when warmup ended).
    pub fn lr_at_time(
        &self,
        step: usize,
        elapsed_s: f64,
        warmup_end_s: Option<f64>,
        budget_s: f64,
    ) -> f64 {
        match warmup_end_s.filter(|_| step >= self.warmup_steps) {
            None => self.warmup_lr(step),
            Some(t0) => self.cosine_lr((elapsed_s - t0) / (budget_s - t0).max(1e-9)),
        }
    }

    /// Linear warmup from lr/warmup to lr at the last warmup step.
    fn warmup_lr(&self, step: usize) -> f64 {
        let w = self.warmup_steps.max(1);
        self.lr * (step + 1).min(w) as f64 / w as f64
    }

    /// Cosine from `lr` (progress 0) to `min_lr` (progress 1 and beyond).
    fn cosine_lr(&self, progress: f64) -> f64 {
        let cosine = 0.5 * (1.0 + (std::f64::consts::PI * progress.clamp(0.0, 1.0)).cos());
        self.min_lr + cosine * (self.lr - self.min_lr)
    }
}

/// Names accepted by `--preset`.
pub const PRESETS: &[&str] = &[
    "default",
    "poet",
    "bench-ref",
    "bench-8l",
    "bench-gpt2s",
    "tiny",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_writes_verse_with_one_character_tokens_and_rotary_positions() {
        // The choice BENCHMARKS.md "Verse" measured; poet shares it.
        for name in ["default", "poet"] {
            let c = TrainConfig::preset(name).unwrap();
            assert_eq!(c.tokenizer, "bpe:8192,han-piece=1", "{name}");
            assert_eq!(c.model.positions, crate::model::Positions::Rotary, "{name}");
            c.validate().unwrap();
        }
        let poet = TrainConfig::preset("poet").unwrap();
        assert_eq!(poet.time_budget_s, Some(1800.0));
        assert!(poet.model.n_layer > TrainConfig::preset("default").unwrap().model.n_layer);
    }

    #[test]
    fn every_range_is_checked_and_names_its_field() {
        use crate::limits::RANGES;
        let base = TrainConfig::preset("tiny").unwrap();
        type Set = fn(&mut TrainConfig);
        let bad: &[(&str, Set)] = &[
            ("batch_size", |c| c.batch_size = 0),
            ("grad_accum", |c| c.grad_accum = usize::MAX),
            ("max_steps", |c| c.max_steps = Some(1 << 50)),
            ("time_budget_s", |c| c.time_budget_s = Some(f64::INFINITY)),
            ("lr", |c| c.lr = 1e10),
            ("lr", |c| c.lr = f64::NAN),
            ("min_lr", |c| c.min_lr = -1.0),
            ("weight_decay", |c| c.weight_decay = 1e30),
            ("weight_decay", |c| c.weight_decay = f64::INFINITY),
            ("beta2", |c| c.beta2 = 1.0),
            ("grad_clip", |c| c.grad_clip = f64::NAN),
            ("val_fraction", |c| c.val_fraction = 0.0),
            ("keep_last", |c| c.keep_last = 0),
            ("max_bad_steps", |c| c.max_bad_steps = 0),
            ("lr x weight_decay", |c| {
                c.lr = 0.5;
                c.weight_decay = 4.0
            }),
            ("tokens a step", |c| {
                c.batch_size = 65_536;
                c.grad_accum = 65_536
            }),
        ];
        for (field, set) in bad {
            let mut c = base.clone();
            set(&mut c);
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains(field), "{field}: {e}");
        }
        // Each range's bounds are themselves accepted unless exclusive.
        for r in RANGES {
            let name = r.field.strip_prefix("model.").unwrap_or(r.field);
            if !r.min_exclusive {
                check_range(name, r.min, "min").unwrap();
            }
            if !r.max_exclusive {
                check_range(name, r.max, "max").unwrap();
            }
            assert!(check_range(name, r.max * 2.0 + 1.0, "x").is_err());
        }
    }

    #[test]
    fn presets_validate() {
        for p in PRESETS {
            TrainConfig::preset(p).unwrap().validate().unwrap();
        }
    }

    /// The rates BENCHMARKS.md ("Verse") measured each preset at: changing one means
    /// measuring again.
    #[test]
    fn learning_rates_are_the_measured_ones() {
        let d = TrainConfig::preset("default").unwrap();
        assert_eq!((d.lr, d.min_lr, d.warmup_steps), (5e-3, 5e-4, 100));
        assert_eq!((d.optimizer, d.batch_size), (UpdateRule::Muon, 4));
        let p = TrainConfig::preset("poet").unwrap();
        assert_eq!((p.lr, p.min_lr, p.warmup_steps), (5e-3, 5e-4, 200));
        assert_eq!((p.optimizer, p.batch_size), (UpdateRule::Muon, 4));
    }

    #[test]
    fn bench_presets_are_the_shapes_pytorch_runs() {
        use crate::model::Positions;
        // (V, T, L, H, C, B) as benches/torch_train.py's PRESETS; learned positions so
        // that PyTorch's GPT is the same model.
        for (name, shape) in [
            ("bench-ref", (256, 256, 4, 4, 256, 16)),
            ("bench-8l", (256, 512, 8, 8, 512, 8)),
            ("bench-gpt2s", (8192, 1024, 12, 12, 768, 2)),
        ] {
            let c = TrainConfig::preset(name).unwrap();
            c.validate().unwrap();
            let m = &c.model;
            assert_eq!(
                (
                    m.vocab_size,
                    m.block_size,
                    m.n_layer,
                    m.n_head,
                    m.n_embd,
                    c.batch_size
                ),
                shape,
                "{name}"
            );
            assert_eq!(m.positions, Positions::Learned, "{name}");
            assert_eq!(
                c.optimizer,
                UpdateRule::AdamW,
                "{name}: PyTorch's side is AdamW"
            );
            // The tokenizer gives the model its vocabulary.
            let v = match crate::train::setup::parse_bpe_spec(&c.tokenizer).unwrap() {
                Some(bpe) => bpe.vocab_size,
                None => 256,
            };
            assert_eq!(v, m.vocab_size, "{name}");
            // GPT-2's count: tied wte V·C, wpe T·C, per block 12·C² + 13·C (qkv, proj,
            // fc, proj with biases, two LayerNorms), ln_f 2·C.
            let (v, t, l, c) = (m.vocab_size, m.block_size, m.n_layer, m.n_embd);
            let formula = v * c + t * c + l * (12 * c * c + 13 * c) + 2 * c;
            assert_eq!(m.num_params(), formula, "{name}");
        }
        let p = |name| TrainConfig::preset(name).unwrap().model.num_params();
        assert_eq!(p("bench-8l"), 25_613_312);
        assert_eq!(p("bench-gpt2s"), 92_133_888);
    }

    #[test]
    fn configs_written_before_the_preset_was_recorded_still_load() {
        let c = TrainConfig::preset("tiny").unwrap();
        assert_eq!(c.preset.as_deref(), Some("tiny"));
        let mut v = toml::Value::try_from(&c).unwrap();
        v.as_table_mut().unwrap().remove("preset");
        let old: TrainConfig = v.try_into().unwrap();
        assert_eq!(old, TrainConfig { preset: None, ..c });
    }

    /// Every preset asks `auto`; a config written before `dtype` existed ran, and
    /// resumes, f32.
    #[test]
    fn presets_ask_auto_and_configs_without_a_dtype_run_f32() {
        for p in PRESETS {
            assert_eq!(TrainConfig::preset(p).unwrap().dtype, Dtype::Auto, "{p}");
        }
        let c = TrainConfig::preset("default").unwrap();
        let mut v = toml::Value::try_from(&c).unwrap();
        assert_eq!(v["dtype"].as_str(), Some("auto"));
        v.as_table_mut().unwrap().remove("dtype");
        let old: TrainConfig = v.try_into().unwrap();
        assert_eq!(old.dtype, Dtype::F32);
    }

    /// `auto` and `bf16` get bf16 products only on the native step of a CPU with
    /// AVX512-BF16; `f32` always gets f32. Every case, whatever this CPU has.
    #[test]
    fn dtype_resolves_by_step_and_cpu() {
        for d in [Dtype::Auto, Dtype::F32, Dtype::Bf16] {
            for native_step in [false, true] {
                for cpu_bf16 in [false, true] {
                    let want = if d != Dtype::F32 && native_step && cpu_bf16 {
                        Precision::Bf16
                    } else {
                        Precision::F32
                    };
                    assert_eq!(
                        d.resolve(native_step, cpu_bf16),
                        want,
                        "{d:?} {native_step} {cpu_bf16}"
                    );
                }
            }
        }
        let here = crate::kernels::gemm_bf16::native();
        assert_eq!(Dtype::Auto.products(true), Dtype::Auto.resolve(true, here));
        assert_eq!(Dtype::from(Precision::Bf16), Dtype::Bf16);
    }

    #[test]
    fn time_schedule_decays_over_the_budget_after_warmup() {
        let c = TrainConfig::preset("default").unwrap();
        let w = c.warmup_steps;
        // During warmup the clock does not matter; the step does.
        assert_eq!(
            c.lr_at_time(w / 2, 200.0, None, 300.0),
            c.lr_at(w / 2, 10_000)
        );
        // Warmup ended at t = 20 s: peak there, halfway at 160 s, floor at and past the budget.
        assert!((c.lr_at_time(w, 20.0, Some(20.0), 300.0) - c.lr).abs() < 1e-12);
        let mid = 0.5 * (c.lr + c.min_lr);
        assert!((c.lr_at_time(w + 50, 160.0, Some(20.0), 300.0) - mid).abs() < 1e-12);
        assert!((c.lr_at_time(w + 99, 300.0, Some(20.0), 300.0) - c.min_lr).abs() < 1e-12);
        assert!((c.lr_at_time(w + 99, 400.0, Some(20.0), 300.0) - c.min_lr).abs() < 1e-12);
    }

    #[test]
    fn schedule_warms_up_then_decays_to_floor() {
        let c = TrainConfig::preset("default").unwrap();
        assert!(c.lr_at(0, 1000) < c.lr / 50.0);
        assert!((c.lr_at(c.warmup_steps, 1000) - c.lr).abs() < 1e-12);
        assert!((c.lr_at(1000, 1000) - c.min_lr).abs() < 1e-12);
        assert!(c.lr_at(500, 1000) < c.lr && c.lr_at(500, 1000) > c.min_lr);
    }
}
