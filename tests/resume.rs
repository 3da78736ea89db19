//! Train N steps, checkpoint, resume, train M more: the losses and the final weights
//! equal those of an uninterrupted N+M run, bit for bit (same process, same threads).

use candle_core::Device;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use tinylm::data::{read_corpus, Corpus};
use tinylm::tokenizer::Tokenizer;
use tinylm::train::config::{Dtype, TrainConfig, UpdateRule};
use tinylm::train::{self, checkpoint, RunOptions};

fn config() -> TrainConfig {
    let mut c = TrainConfig::preset("tiny").unwrap();
    c.model.block_size = 32;
    c.model.n_embd = 32;
    c.batch_size = 4;
    c.max_steps = Some(12);
    c.warmup_steps = 3;
    c.log_interval = 1;
    c.eval_interval = 5;
    c.eval_batches = 1;
    c.checkpoint_interval = 100;
    // f32 products here whatever the CPU; the Muon case below asks for bf16.
    c.dtype = Dtype::F32;
    c
}

fn opts(dir: &Path, stop_at: Option<usize>) -> RunOptions {
    RunOptions {
        run_dir: dir.to_path_buf(),
        device: Device::Cpu,
        stop: Arc::new(AtomicBool::new(false)),
        progress: false,
        stop_at_step: stop_at,
        corpus: None,
    }
}

/// (step, train loss) of every logged step, as written to metrics.jsonl.
fn train_losses(dir: &Path) -> Vec<(u64, f64)> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            Some((v["step"].as_u64()?, v["train_loss"].as_f64()?))
        })
        .collect()
}

#[test]
fn resumed_run_equals_uninterrupted_run_bit_for_bit() {
    resume_matches(config());
}

/// The same under Muon, whose matrices keep a momentum buffer and no second moment,
/// with bf16 products (f32 on a CPU without AVX512-BF16).
#[test]
fn muon_resumed_run_equals_uninterrupted_run_bit_for_bit() {
    let cfg = TrainConfig {
        optimizer: UpdateRule::Muon,
        dtype: Dtype::Bf16,
        ..config()
    };
    let optim = resume_matches(cfg);
    let has = |k: &str| optim.iter().any(|n| n == k);
    assert!(has("m.h.0.mlp.c_fc.weight") && !has("v.h.0.mlp.c_fc.weight"));
    assert!(has("m.wte") && has("v.wte"));
}

/// Trains `cfg` 12 steps straight and 7 + 5 steps with a checkpoint between; asserts
/// equal losses, weights and optimizer state. Returns the optimizer tensors' names.
fn resume_matches(cfg: TrainConfig) -> Vec<String> {
    let text = read_corpus(Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/data/zh_tiny.txt"
    )))
    .unwrap();
    let tok = Tokenizer::Bytes;
    let corpus = Corpus::split(
        &text,
        &tok,
        cfg.val_fraction,
        cfg.seed,
        cfg.model.block_size,
    )
    .unwrap();
    let whole = tempfile::tempdir().unwrap();
    let split = tempfile::tempdir().unwrap();

    let a = train::run(&cfg, &corpus, &tok, &opts(whole.path(), None), None).unwrap();
    assert_eq!(a.steps, 12);

    let b1 = train::run(&cfg, &corpus, &tok, &opts(split.path(), Some(7)), None).unwrap();
    assert!(b1.interrupted);
    assert_eq!(b1.steps, 7);
    let loaded = checkpoint::load(split.path(), false, &Device::Cpu).unwrap();
    assert_eq!(loaded.state.step, 7);
    let b2 = train::run(&cfg, &corpus, &tok, &opts(split.path(), None), Some(loaded)).unwrap();
    assert_eq!(b2.steps, 12);

    let la = train_losses(whole.path());
    let lb = train_losses(split.path());
    println!("uninterrupted: {la:?}\nresumed:       {lb:?}");
    assert_eq!(la.len(), 12);
    assert_eq!(la, lb, "training losses differ after resume");

    let wa = checkpoint::load(whole.path(), false, &Device::Cpu).unwrap();
    let wb = checkpoint::load(split.path(), false, &Device::Cpu).unwrap();
    for (name, ta) in &wa.model {
        let va: Vec<f32> = ta.flatten_all().unwrap().to_vec1().unwrap();
        let vb: Vec<f32> = wb.model[name].flatten_all().unwrap().to_vec1().unwrap();
        let same = va.iter().zip(&vb).all(|(x, y)| x.to_bits() == y.to_bits());
        assert!(same, "parameter {name} differs after resume");
    }
    let keys = |m: &std::collections::HashMap<String, candle_core::Tensor>| {
        let mut k: Vec<String> = m.keys().cloned().collect();
        k.sort();
        k
    };
    assert_eq!(
        keys(&wa.optim),
        keys(&wb.optim),
        "optimizer tensors differ in name"
    );
    for (name, ta) in &wa.optim {
        let va: Vec<f32> = ta.flatten_all().unwrap().to_vec1().unwrap();
        let vb: Vec<f32> = wb.optim[name].flatten_all().unwrap().to_vec1().unwrap();
        assert!(
            va.iter().zip(&vb).all(|(x, y)| x.to_bits() == y.to_bits()),
            "{name} differs"
        );
    }
    println!(
        "verdict: {} losses and {} tensors identical",
        la.len(),
        wa.model.len() + wa.optim.len()
    );
    wa.optim.keys().cloned().collect()
}
