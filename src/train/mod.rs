//! Training: the loop, the optimizer, checkpoints and metrics.
//!
//! One optimizer step reads as its phases: learning rate, (evaluation), micro-steps
//! (forward + backward, gradients summed), clip, step, log, (checkpoint).

pub mod checkpoint;
pub mod config;
pub mod config_file;
pub mod faults;
pub mod memory;
pub mod muon;
pub mod optimizer;
pub mod setup;

use crate::data::{eval_windows, Corpus, WindowSampler};
use crate::eval::{evaluate_windows, EvalReport};
use crate::loss::CrossEntropyOptions;
use crate::model::{native, Gpt, Precision};
use crate::tokenizer::Tokenizer;
use candle_core::{Device, Tensor};
use checkpoint::TrainState;
use config::{Dtype, TrainConfig, UpdateRule};
use optimizer::{AdamWConfig, Optimizer, ParamGroup};
use serde::Serialize;
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// Where and how a run happens (not part of its config).
pub struct RunOptions {
    pub run_dir: PathBuf,
    pub device: Device,
    /// Set (by a Ctrl-C handler) to stop after the current step with a checkpoint.
    pub stop: Arc<AtomicBool>,
    /// Draw a progress bar (log lines are printed either way).
    pub progress: bool,
    /// Behave as if interrupted after this step (tests of resume use it).
    pub stop_at_step: Option<usize>,
    /// The training text, recorded in every checkpoint (`setup::prepare` makes it).
    pub corpus: Option<checkpoint::CorpusRecord>,
}

/// How a run ended.
#[derive(Debug, Clone)]
pub struct RunSummary {
    pub steps: usize,
    pub elapsed_s: f64,
    pub final_val: EvalReport,
    /// The step `final_val` was measured at: the last step, except for an interrupted
    /// run (not evaluated again when stopped), where it is its last evaluation's.
    pub final_val_step: usize,
    pub best_val_loss: Option<f64>,
    pub last_checkpoint: PathBuf,
    /// True when the stop flag (Ctrl-C) ended the run early.
    pub interrupted: bool,
    pub tokens_per_s: f64,
}

/// One line of `metrics.jsonl`.
#[derive(Serialize)]
struct MetricsLine {
    step: usize,
    elapsed_s: f64,
    /// Training tokens consumed so far (step × tokens per step).
    tokens: usize,
    train_loss: Option<f64>,
    val_loss: Option<f64>,
    val_bpb: Option<f64>,
    val_bpc: Option<f64>,
    lr: f64,
    grad_norm: Option<f64>,
    tok_per_s: Option<f64>,
    mfu: Option<f64>,
    /// Of the validation text (eval lines): turns tokens into bytes for `tinylm plot`.
    bytes_per_token: Option<f64>,
}

/// Times of one optimizer step's phases, in seconds.
#[derive(Debug, Clone, Copy, Default)]
pub struct StepTimes {
    pub forward: f64,
    pub backward: f64,
    pub optimizer: f64,
}

/// What one optimizer step reports.
#[derive(Debug, Clone, Copy)]
pub struct StepOutcome {
    /// Mean training loss over the step's micro-batches.
    pub loss: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// False when the loss or gradient was not finite and the update was skipped.
    pub applied: bool,
    /// False when the update itself made a weight NaN or infinite (the run must stop:
    /// the weights in memory are lost, the last checkpoint is not).
    pub weights_finite: bool,
    pub times: StepTimes,
}

/// The model, its optimizer and the sampler: everything one step changes.
pub struct Trainer {
    pub model: Gpt,
    pub optimizer: Optimizer,
    pub sampler: WindowSampler,
    pub config: TrainConfig,
    device: Device,
}

/// AdamW over the model's parameters in the model's order (so the i-th gradient, the
/// i-th moment pair and the i-th parameter line up), each with its weight decay: the
/// matrices of linear layers only (`params::Role::decays`), which `--optimizer muon`
/// also hands to Muon.
pub fn optimizer_for(model: &Gpt, config: &TrainConfig) -> anyhow::Result<Optimizer> {
    let groups = model
        .params()
        .iter()
        .zip(model.config.layout().into_flat())
        .map(|((_, var), spec)| {
            let matrix = spec.role.is_matrix();
            ParamGroup {
                vars: vec![var.clone()],
                weight_decay: if spec.role.decays() {
                    config.weight_decay
                } else {
                    0.0
                },
                rule: if matrix {
                    config.optimizer
                } else {
                    UpdateRule::AdamW
                },
            }
        })
        .collect();
    let adam = AdamWConfig {
        lr: config.lr,
        beta1: config.beta1,
        beta2: config.beta2,
        eps: 1e-8,
    };
    Ok(Optimizer::new(groups, adam)?)
}

/// The optimizer's moments as named tensors "m.<param>" and "v.<param>" (checkpoints;
/// Muon's matrices have no v).
pub fn optimizer_tensors(model: &Gpt, opt: &Optimizer) -> anyhow::Result<HashMap<String, Tensor>> {
    let mut out = HashMap::new();
    for ((name, _), (m, v)) in model.params().iter().zip(opt.moments()?) {
        out.insert(format!("m.{name}"), m);
        if let Some(v) = v {
            out.insert(format!("v.{name}"), v);
        }
    }
    Ok(out)
}

/// The line a run prints about its products, unless f32 was asked for: what `dtype`
/// resolves to (`native_step`: the run takes the native CPU step).
pub fn dtype_note(dtype: Dtype, native_step: bool) -> Option<String> {
    note_for(dtype, native_step, crate::kernels::gemm_bf16::native())
}

/// [`dtype_note`] on a CPU with (`cpu_bf16`) or without AVX512-BF16.
fn note_for(dtype: Dtype, native_step: bool, cpu_bf16: bool) -> Option<String> {
    let why_f32 = if native_step {
        "this CPU has no AVX512-BF16"
    } else {
        "this run takes candle's graph"
    };
    match (dtype, dtype.resolve(native_step, cpu_bf16)) {
        (Dtype::F32, _) => None,
        (_, Precision::Bf16) => Some(format!(
            "dtype {}: matrix products in bf16 (AVX512-BF16) with f32 sums, the \
             activations they alone use stored in bf16; weights, optimizer state, other \
             activations and the loss in f32",
            dtype.name()
        )),
        (Dtype::Bf16, _) => Some(format!(
            "dtype bf16: {why_f32}, so the products run in f32, as with --dtype f32"
        )),
        (Dtype::Auto, _) => Some(format!("dtype auto: f32 products ({why_f32})")),
    }
}

/// Refuses `--dtype bf16` where the step is not the native CPU one (candle's graph has
/// no bf16 products of ours); `auto` runs f32 there.
fn check_dtype(model: &Gpt, config: &TrainConfig) -> anyhow::Result<()> {
    anyhow::ensure!(
        config.dtype != Dtype::Bf16 || native::supported(model),
        "--dtype bf16 runs in the native CPU step only (f32 parameters on the CPU, fused \
         kernels); this run takes candle's graph: use --dtype f32 (or auto, which runs f32 \
         there)"
    );
    Ok(())
}

impl Trainer {
    pub fn new(config: &TrainConfig, device: &Device) -> anyhow::Result<Self> {
        config.validate()?;
        let model = Gpt::new(&config.model, config.seed, device)?;
        check_dtype(&model, config)?;
        let optimizer = optimizer_for(&model, config)?;
        Ok(Self {
            model,
            optimizer,
            sampler: WindowSampler::new(config.seed.wrapping_add(1)),
            config: config.clone(),
            device: device.clone(),
        })
    }

    /// Rebuilds a trainer from a checkpoint, refusing one whose tensors do not fit.
    pub fn from_checkpoint(loaded: &checkpoint::Loaded, device: &Device) -> anyhow::Result<Self> {
        let config = &loaded.state.config;
        let model = Gpt::from_tensors(&config.model, loaded.model.clone()).map_err(|e| {
            anyhow::anyhow!(
                "checkpoint {} does not fit its config: {e}",
                loaded.dir.display()
            )
        })?;
        let mut optimizer = optimizer_for(&model, config)?;
        let moments = model
            .params()
            .iter()
            .zip(optimizer.rules())
            .map(|((name, _), rule)| {
                let get = |k: String| {
                    loaded.optim.get(&k).cloned().ok_or_else(|| {
                        anyhow::anyhow!(
                            "checkpoint {}: optimizer state lacks {k}",
                            loaded.dir.display()
                        )
                    })
                };
                let v = match rule {
                    UpdateRule::AdamW => Some(get(format!("v.{name}"))?),
                    UpdateRule::Muon => None,
                };
                Ok((get(format!("m.{name}"))?, v))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        optimizer
            .set_state(
                loaded
                    .state
                    .optimizer_steps
                    .unwrap_or(loaded.state.step as u64),
                &moments,
            )
            .map_err(|e| anyhow::anyhow!("checkpoint {}: {e}", loaded.dir.display()))?;
        Ok(Self {
            model,
            optimizer,
            sampler: WindowSampler::from_state(loaded.state.sampler),
            config: config.clone(),
            device: device.clone(),
        })
    }

    /// One optimizer step at learning rate `lr`: grad_accum micro-batches of forward +
    /// backward with gradients summed, global-norm clip, AdamW. A non-finite loss or
    /// gradient skips the update.
    ///
    /// f32 models on the CPU run the native step (`model::native`: no candle graph,
    /// gradients accumulated in place); other devices and dtypes run candle's autograd.
    /// (There, non-finite logits make the fused loss return an error, which ends the run
    /// instead of skipping the step.)
    pub fn step(&mut self, tokens: &[u32], lr: f64) -> anyhow::Result<StepOutcome> {
        let c = &self.config;
        let (b, t, k) = (c.batch_size, c.model.block_size, c.grad_accum);
        // Mean over all B·T·k targets of the step: each micro-batch divides by the total.
        let opts = CrossEntropyOptions {
            normalizer: Some((b * t * k) as f32),
            ..Default::default()
        };
        let mut times = StepTimes::default();
        let (mut loss_sum, grads) = if native::supported(&self.model) {
            self.native_micro_steps(tokens, &opts, &mut times)?
        } else {
            self.graph_micro_steps(tokens, &opts, &mut times)?
        };
        let c = &self.config;
        let t2 = Instant::now();
        let mut sq = 0f64;
        for g in grads.iter().flatten() {
            sq += g.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
        }
        let grad_norm = sq.sqrt();
        if faults::nan_loss_next_step() {
            loss_sum = f64::NAN;
        }
        let applied = loss_sum.is_finite() && grad_norm.is_finite();
        if applied {
            let scale = if c.grad_clip > 0.0 && grad_norm > c.grad_clip {
                c.grad_clip / grad_norm
            } else {
                1.0
            };
            self.optimizer.set_lr(lr);
            self.optimizer.step_scaled(&grads, scale)?;
            if faults::nan_weights_after_update() {
                let (_, w) = &self.model.params()[0];
                let poisoned = w.as_tensor().affine(1.0, f64::NAN)?;
                w.set(&poisoned)?;
            }
        }
        let weights_finite = !applied || self.optimizer.params_finite()?;
        times.optimizer = t2.elapsed().as_secs_f64();
        Ok(StepOutcome {
            loss: loss_sum,
            grad_norm,
            applied,
            weights_finite,
            times,
        })
    }

    /// The precision the step's products run in: the config's `dtype` as
    /// [`Dtype::products`] resolves it for this model ([`dtype_note`] says so).
    pub fn products(&self) -> Precision {
        self.config.dtype.products(native::supported(&self.model))
    }

    /// The micro-steps through `model::native`: (summed loss, gradients).
    fn native_micro_steps(
        &mut self,
        tokens: &[u32],
        opts: &CrossEntropyOptions,
        times: &mut StepTimes,
    ) -> anyhow::Result<(f64, Vec<Option<Tensor>>)> {
        let c = &self.config;
        let (b, t) = (c.batch_size, c.model.block_size);
        let mut grads = native::zero_grads(&self.model);
        let mut loss_sum = 0.0;
        for _ in 0..c.grad_accum {
            let batch = self.sampler.next_batch(tokens, b, t);
            let out = native::loss_and_grad_with(
                &self.model,
                &batch.inputs,
                &batch.targets,
                (b, t),
                opts,
                &mut grads,
                self.products(),
            )?;
            loss_sum += out.loss;
            times.forward += out.forward_s;
            times.backward += out.backward_s;
        }
        let grads = grads
            .into_iter()
            .zip(self.model.params())
            .map(|(g, (_, p))| Ok(Some(Tensor::from_vec(g, p.shape(), &self.device)?)))
            .collect::<anyhow::Result<_>>()?;
        Ok((loss_sum, grads))
    }

    /// The micro-steps through candle's graph and autograd: (summed loss, gradients).
    fn graph_micro_steps(
        &mut self,
        tokens: &[u32],
        opts: &CrossEntropyOptions,
        times: &mut StepTimes,
    ) -> anyhow::Result<(f64, Vec<Option<Tensor>>)> {
        let c = &self.config;
        let (b, t) = (c.batch_size, c.model.block_size);
        let params: Vec<Tensor> = self
            .model
            .params()
            .iter()
            .map(|(_, v)| v.as_tensor().clone())
            .collect();
        let mut grads: Vec<Option<Tensor>> = vec![None; params.len()];
        let mut loss_sum = 0.0;
        for _ in 0..c.grad_accum {
            let batch = self.sampler.next_batch(tokens, b, t);
            let x = Tensor::from_vec(batch.inputs, (b, t), &self.device)?; // [B, T]
            let y = Tensor::from_vec(batch.targets, (b, t), &self.device)?; // [B, T]
            let t0 = Instant::now();
            let loss = self.model.loss(&x, &y, opts)?;
            loss_sum += loss.to_scalar::<f32>()? as f64;
            let t1 = Instant::now();
            let mut store = loss.backward()?;
            for (g, p) in grads.iter_mut().zip(&params) {
                if let Some(new) = store.remove(p) {
                    *g = Some(match g.take() {
                        None => new,
                        Some(acc) => (acc + new)?,
                    });
                }
            }
            times.forward += (t1 - t0).as_secs_f64();
            times.backward += t1.elapsed().as_secs_f64();
        }
        Ok((loss_sum, grads))
    }
}

/// The tokenizer a checkpoint was trained with: bytes, or the `tokenizer.json` in the
/// checkpoint directory or its run directory, checked against the fingerprint recorded
/// in the checkpoint.
pub fn checkpoint_tokenizer(loaded: &checkpoint::Loaded) -> anyhow::Result<Tokenizer> {
    let want = &loaded.state.tokenizer;
    if want == "bytes" {
        return Ok(Tokenizer::Bytes);
    }
    let candidates = [
        Some(loaded.dir.join("tokenizer.json")),
        loaded.dir.parent().map(|p| p.join("tokenizer.json")),
    ];
    let path = candidates
        .into_iter()
        .flatten()
        .find(|p| p.exists())
        .ok_or_else(|| {
            anyhow::anyhow!(
                "checkpoint {} was trained with tokenizer {want}, but no tokenizer.json is beside it",
                loaded.dir.display()
            )
        })?;
    let tok = Tokenizer::Bpe(crate::tokenizer::bpe::BpeTokenizer::load(&path)?);
    anyhow::ensure!(
        &tok.fingerprint() == want,
        "{} is tokenizer {}, but checkpoint {} was trained with {want}",
        path.display(),
        tok.fingerprint(),
        loaded.dir.display()
    );
    Ok(tok)
}

/// A checkpoint loaded for sampling or evaluation.
pub struct LoadedModel {
    pub model: Gpt,
    pub tokenizer: Tokenizer,
    pub state: TrainState,
    /// The checkpoint directory.
    pub dir: PathBuf,
}

/// Loads a checkpoint (a checkpoint directory, or a run directory: its best) with its
/// tokenizer, refusing one whose vocabulary differs from its tokenizer's.
pub fn load_model(path: &Path, device: &Device) -> anyhow::Result<LoadedModel> {
    let loaded = checkpoint::load(path, true, device)?;
    let tokenizer = checkpoint_tokenizer(&loaded)?;
    let v = loaded.state.config.model.vocab_size;
    anyhow::ensure!(
        v == tokenizer.vocab_size(),
        "checkpoint {} has a vocabulary of {v} but its tokenizer has {} tokens",
        loaded.dir.display(),
        tokenizer.vocab_size()
    );
    let model = Gpt::from_tensors(&loaded.state.config.model, loaded.model).map_err(|e| {
        anyhow::anyhow!(
            "checkpoint {} does not fit its config: {e}",
            loaded.dir.display()
        )
    })?;
    Ok(LoadedModel {
        model,
        tokenizer,
        state: loaded.state,
        dir: loaded.dir,
    })
}

/// Refuses to continue a checkpoint with a tokenizer other than the one it was
/// trained with.
pub fn ensure_same_tokenizer(
    loaded: &checkpoint::Loaded,
    tokenizer: &Tokenizer,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        loaded.state.tokenizer == tokenizer.fingerprint(),
        "checkpoint {} was trained with tokenizer {}, not {}",
        loaded.dir.display(),
        loaded.state.tokenizer,
        tokenizer.fingerprint()
    );
    Ok(())
}

/// Prints a line above the progress bar (or plainly when there is none).
fn say(pb: &indicatif::ProgressBar, line: &str) {
    if pb.is_hidden() {
        println!("{line}");
    } else {
        pb.println(line);
    }
}

/// Appends the form of the final samples to the run's metrics.jsonl, as
/// `{"step": N, "form": {...}}`.
pub fn append_form_metrics(
    run_dir: &Path,
    step: usize,
    report: &crate::verse::FormReport,
) -> anyhow::Result<()> {
    append_json(
        &run_dir.join("metrics.jsonl"),
        &serde_json::json!({ "step": step, "form": report }),
    )
}

fn append_metrics(path: &Path, line: &MetricsLine) -> anyhow::Result<()> {
    append_json(path, line)
}

fn append_json(path: &Path, line: &impl Serialize) -> anyhow::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
    writeln!(f, "{}", serde_json::to_string(line)?)?;
    Ok(())
}

/// Trains on `corpus` until the horizon, the time budget or the stop flag, evaluating,
/// logging and checkpointing along the way. `resume` continues a checkpointed run.
pub fn run(
    config: &TrainConfig,
    corpus: &Corpus,
    tokenizer: &Tokenizer,
    opts: &RunOptions,
    resume: Option<checkpoint::Loaded>,
) -> anyhow::Result<RunSummary> {
    config.validate()?;
    anyhow::ensure!(
        tokenizer.vocab_size() == config.model.vocab_size,
        "the tokenizer has {} tokens but the model's vocabulary is {}",
        tokenizer.vocab_size(),
        config.model.vocab_size
    );
    std::fs::create_dir_all(&opts.run_dir).map_err(|e| {
        anyhow::anyhow!(
            "cannot create run directory {}: {e}",
            opts.run_dir.display()
        )
    })?;
    let metrics_path = opts.run_dir.join("metrics.jsonl");
    let (mut trainer, mut state) = match resume {
        Some(loaded) => {
            ensure_same_tokenizer(&loaded, tokenizer)?;
            // A resume may change when the run ends and how often it reports
            // (`setup::RESUME_FLAGS`), nothing that shapes the training itself.
            anyhow::ensure!(
                config.same_training(&loaded.state.config),
                "checkpoint {}: a resumed run must keep the checkpoint's model, optimizer \
                 and data settings",
                loaded.dir.display()
            );
            let trainer = Trainer::from_checkpoint(&loaded, &opts.device)?;
            let mut state = loaded.state;
            state.config = config.clone();
            if opts.corpus.is_some() {
                state.corpus = opts.corpus.clone();
            }
            state.horizon = config.max_steps.unwrap_or(usize::MAX);
            (trainer, state)
        }
        None => {
            let trainer = Trainer::new(config, &opts.device)?;
            let state = TrainState {
                config: config.clone(),
                step: 0,
                horizon: config.max_steps.unwrap_or(usize::MAX),
                sampler: trainer.sampler.state(),
                tokenizer: tokenizer.fingerprint(),
                best_val_loss: None,
                best_step: None,
                elapsed_s: 0.0,
                val_loss: None,
                warmup_end_s: None,
                optimizer_steps: None,
                corpus: opts.corpus.clone(),
                products: None,
            };
            (trainer, state)
        }
    };
    let cfg = state.config.clone();
    check_dtype(&trainer.model, &cfg)?;
    trainer.config = cfg.clone();
    // `auto` resolves per machine: a resume on another CPU says when that changes.
    let products = trainer.products();
    if let Some(before) = state.products.filter(|&p| p != products) {
        println!(
            "resume changes products: {} -> {} (--dtype {} on this machine)",
            before.name(),
            products.name(),
            cfg.dtype.name()
        );
    }
    state.products = Some(products);
    let mc = &cfg.model;
    let windows = eval_windows(
        &corpus.val,
        cfg.eval_batches * cfg.batch_size,
        mc.block_size,
    );
    if let Some(note) = dtype_note(cfg.dtype, native::supported(&trainer.model)) {
        println!("{note}");
    }
    let rows = cfg.batch_size * mc.block_size;
    let mut ceiling = crate::device::Ceiling::measure(&opts.device, mc, rows, trainer.products())?;
    println!(
        "MFU: {:.1} MFLOP a token over a measured ceiling of {:.0} GFLOP/s (tinylm train --help)",
        mc.flops_per_token() / 1e6,
        ceiling.flops() / 1e9
    );

    let evaluate = |trainer: &Trainer| {
        evaluate_windows(
            &trainer.model,
            tokenizer,
            &corpus.val,
            &windows,
            cfg.batch_size,
            &opts.device,
        )
    };
    let save = |trainer: &Trainer, state: &TrainState| -> anyhow::Result<PathBuf> {
        let state = TrainState {
            optimizer_steps: Some(trainer.optimizer.step_count()),
            ..state.clone()
        };
        let dir = checkpoint::save(
            &opts.run_dir,
            &state,
            &trainer.model.named_tensors(),
            &optimizer_tensors(&trainer.model, &trainer.optimizer)?,
        )?;
        checkpoint::prune(&opts.run_dir, cfg.keep_last, state.best_step)?;
        Ok(dir)
    };

    let time_budget = cfg.time_budget_s.unwrap_or(f64::INFINITY);
    // A step-count run shows steps; a time-budget run shows seconds of its budget.
    let by_time = cfg.max_steps.is_none();
    let pb = if !opts.progress {
        indicatif::ProgressBar::hidden()
    } else if by_time {
        indicatif::ProgressBar::new(time_budget.ceil() as u64)
    } else {
        indicatif::ProgressBar::new(state.horizon as u64)
    };
    let unit = if by_time { "s" } else { "steps" };
    pb.set_style(
        indicatif::ProgressStyle::with_template(&format!(
            "{{spinner}} [{{elapsed_precise}}] {{wide_bar}} {{pos}}/{{len}} {unit} (ETA {{eta}}) {{msg}}"
        ))?
        .progress_chars("=> "),
    );
    pb.set_position(if by_time {
        state.elapsed_s as u64
    } else {
        state.step as u64
    });

    let started = Instant::now();
    let elapsed0 = state.elapsed_s;
    let elapsed = |started: &Instant| elapsed0 + started.elapsed().as_secs_f64();
    let mut last_val = None;
    let mut last_ckpt = None;
    let mut bad_steps = 0usize;
    let mut interrupted = false;
    let mut tokens_done = 0usize;
    let mut train_time = 0f64;
    let mut eval_time_per_call = None;

    while state.step < state.horizon {
        let step = state.step;
        // Phase: learning rate. A time-budget run decays over the fraction of its
        // budget spent (so it ends at min_lr whatever the machine's speed); a
        // step-count run over its steps (deterministic).
        if step == cfg.warmup_steps && state.warmup_end_s.is_none() {
            state.warmup_end_s = Some(elapsed(&started));
        }
        let lr = if by_time {
            cfg.lr_at_time(step, elapsed(&started), state.warmup_end_s, time_budget)
        } else {
            cfg.lr_at(step, state.horizon)
        };

        // Phase: evaluation (at step 0 too: the initial loss is worth seeing).
        if step % cfg.eval_interval == 0 {
            let t0 = Instant::now();
            let rep = evaluate(&trainer)?;
            eval_time_per_call = Some(t0.elapsed().as_secs_f64());
            let improved =
                record_eval(&mut state, &rep, &pb, &metrics_path, elapsed(&started), lr)?;
            last_val = Some((step, rep));
            if let Err(e) = crate::plot::write_run_curves(&opts.run_dir) {
                say(&pb, &format!("warning: curves not drawn: {e:#}"));
            }
            // The best model so far is kept as a checkpoint of its own.
            if improved && step > 0 {
                state.elapsed_s = elapsed(&started);
                last_ckpt = Some(save(&trainer, &state)?);
            }
        }

        // Phases: micro-steps, clip, optimizer step.
        let t0 = Instant::now();
        let out = trainer.step(&corpus.train, lr)?;
        let dt = t0.elapsed().as_secs_f64();
        state.step += 1;
        state.sampler = trainer.sampler.state();
        tokens_done += cfg.tokens_per_step();
        train_time += dt;
        pb.set_position(if by_time {
            elapsed(&started) as u64
        } else {
            state.step as u64
        });

        let last_good = |last_ckpt: &Option<PathBuf>| {
            last_ckpt
                .as_ref()
                .map(|p: &PathBuf| p.display().to_string())
                .unwrap_or_else(|| "none was written".to_string())
        };
        if !out.weights_finite {
            pb.abandon();
            anyhow::bail!(
                "stopping: the update of step {} made weights NaN or infinite (learning rate \
                 {lr:.3e}, weight decay {}: lower --lr or --weight-decay); they are not saved; \
                 last good checkpoint: {}",
                state.step,
                cfg.weight_decay,
                last_good(&last_ckpt)
            );
        }
        if out.applied {
            bad_steps = 0;
        } else {
            bad_steps += 1;
            let what = match (out.loss.is_finite(), out.grad_norm.is_finite()) {
                (false, _) => format!("non-finite loss {}", out.loss),
                (true, _) => format!(
                    "non-finite gradient norm {} (loss {:.4})",
                    out.grad_norm, out.loss
                ),
            };
            say(
                &pb,
                &format!(
                    "step {}: {what}: update skipped ({bad_steps}/{})",
                    state.step, cfg.max_bad_steps
                ),
            );
            if bad_steps >= cfg.max_bad_steps {
                pb.abandon();
                anyhow::bail!(
                    "stopping: {bad_steps} consecutive steps with a non-finite loss or gradient \
                     (lower --lr?); last good checkpoint: {}",
                    last_good(&last_ckpt)
                );
            }
        }

        // Phase: log.
        let tok_s = cfg.tokens_per_step() as f64 / dt;
        let was_raised = ceiling.raised();
        let mfu = ceiling.mfu(tok_s);
        if ceiling.raised() && !was_raised {
            say(
                &pb,
                &format!(
                    "MFU: step {} ran the model at {:.0} GFLOP/s, above every measurement of \
                     the ceiling (best {:.0}): MFU is taken against the fastest step from here",
                    state.step,
                    ceiling.flops() / 1e9,
                    ceiling.measured() / 1e9
                ),
            );
        }
        if state.step % cfg.log_interval == 0 || state.step == 1 {
            say(
                &pb,
                &format!(
                    "step {:>6} | loss {:.4} | grad norm {:.3} | lr {:.2e} | {:.0} ms | {:.0} tok/s | MFU {:.1}%",
                    state.step,
                    out.loss,
                    out.grad_norm,
                    lr,
                    dt * 1e3,
                    tok_s,
                    100.0 * mfu
                ),
            );
            pb.set_message(format!("loss {:.3}", out.loss));
            append_metrics(
                &metrics_path,
                &MetricsLine {
                    step: state.step,
                    elapsed_s: elapsed(&started),
                    tokens: state.step * cfg.tokens_per_step(),
                    train_loss: Some(out.loss),
                    val_loss: None,
                    val_bpb: None,
                    val_bpc: None,
                    lr,
                    grad_norm: Some(out.grad_norm),
                    tok_per_s: Some(tok_s),
                    mfu: Some(mfu),
                    bytes_per_token: None,
                },
            )?;
        }

        // The final evaluation must fit in the budget too.
        let out_of_time = elapsed(&started) + eval_time_per_call.unwrap_or(0.0) >= time_budget;
        interrupted = opts.stop.load(Ordering::SeqCst) || opts.stop_at_step == Some(state.step);
        let last = state.step >= state.horizon || out_of_time || interrupted;
        if last {
            state.horizon = state.horizon.min(state.step);
        }
        // Phase: checkpoint (periodic, and always at the end with a final evaluation).
        if last || state.step % cfg.checkpoint_interval == 0 {
            if last && !interrupted {
                let rep = evaluate(&trainer)?;
                record_eval(&mut state, &rep, &pb, &metrics_path, elapsed(&started), lr)?;
                last_val = Some((state.step, rep));
            } else {
                state.val_loss = None;
            }
            state.elapsed_s = elapsed(&started);
            last_ckpt = Some(save(&trainer, &state)?);
        }
        if last {
            break;
        }
    }
    pb.finish_and_clear();
    match crate::plot::write_run_curves(&opts.run_dir) {
        Ok(path) => println!("curves: {}", path.display()),
        Err(e) => eprintln!("warning: curves not drawn: {e:#}"),
    }
    let (final_val_step, final_val) = match last_val {
        Some(v) => v,
        None => (state.step, evaluate(&trainer)?),
    };
    let last_checkpoint = match last_ckpt {
        Some(p) => p,
        None => {
            state.elapsed_s = elapsed(&started);
            save(&trainer, &state)?
        }
    };
    // A model worse than a uniform guess over the vocabulary has diverged, whatever
    // the loop thought of each step: say so instead of "done".
    let uniform = (cfg.model.vocab_size as f64).ln();
    anyhow::ensure!(
        interrupted || final_val.loss <= uniform + 1.0,
        "the run diverged: validation loss {:.4e} is worse than a uniform guess over {} \
         tokens ({uniform:.3}); lower --lr (it was {:.3e}); its checkpoints are in {}",
        final_val.loss,
        cfg.model.vocab_size,
        cfg.lr,
        opts.run_dir.display()
    );
    Ok(RunSummary {
        steps: state.step,
        elapsed_s: elapsed(&started),
        final_val,
        final_val_step,
        best_val_loss: state.best_val_loss,
        last_checkpoint,
        interrupted,
        tokens_per_s: tokens_done as f64 / train_time.max(1e-9),
    })
}

/// Notes an evaluation: best-so-far, a log line and a metrics line. True when it is the
/// best so far.
fn record_eval(
    state: &mut TrainState,
    rep: &EvalReport,
    pb: &indicatif::ProgressBar,
    metrics_path: &Path,
    elapsed_s: f64,
    lr: f64,
) -> anyhow::Result<bool> {
    state.val_loss = Some(rep.loss);
    let improved = state.best_val_loss.is_none_or(|b| rep.loss < b);
    if improved {
        state.best_val_loss = Some(rep.loss);
        state.best_step = Some(state.step);
    }
    say(
        pb,
        &format!(
            "eval step {:>6} | val loss {:.4} | {:.3} bits/byte | {:.3} bits/char | ppl {:.2} | {:.2} bytes/token",
            state.step, rep.loss, rep.bits_per_byte, rep.bits_per_char, rep.perplexity, rep.bytes_per_token
        ),
    );
    append_metrics(
        metrics_path,
        &MetricsLine {
            step: state.step,
            elapsed_s,
            tokens: state.step * state.config.tokens_per_step(),
            train_loss: None,
            val_loss: Some(rep.loss),
            val_bpb: Some(rep.bits_per_byte),
            val_bpc: Some(rep.bits_per_char),
            lr,
            grad_norm: None,
            tok_per_s: None,
            mfu: None,
            bytes_per_token: Some(rep.bytes_per_token),
        },
    )?;
    Ok(improved)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a run prints about its products, in every case whatever this CPU has:
    /// nothing for f32; what auto or bf16 resolved to, and why f32 when it is.
    #[test]
    fn the_dtype_note_says_what_each_case_resolves_to() {
        let note = |d, native_step, cpu_bf16| note_for(d, native_step, cpu_bf16);
        for (native_step, cpu_bf16) in [(false, false), (false, true), (true, false), (true, true)]
        {
            assert_eq!(note(Dtype::F32, native_step, cpu_bf16), None);
        }
        let bf16 = "matrix products in bf16 (AVX512-BF16) with f32 sums";
        for d in [Dtype::Auto, Dtype::Bf16] {
            let on = note(d, true, true).unwrap();
            assert!(
                on.starts_with(&format!("dtype {}: ", d.name())) && on.contains(bf16),
                "{on}"
            );
        }
        let auto_cpu = note(Dtype::Auto, true, false).unwrap();
        assert_eq!(
            auto_cpu,
            "dtype auto: f32 products (this CPU has no AVX512-BF16)"
        );
        let auto_graph = note(Dtype::Auto, false, true).unwrap();
        assert_eq!(
            auto_graph,
            "dtype auto: f32 products (this run takes candle's graph)"
        );
        let bf16_cpu = note(Dtype::Bf16, true, false).unwrap();
        assert!(bf16_cpu.contains("this CPU has no AVX512-BF16, so the products run in f32"));
    }
}
