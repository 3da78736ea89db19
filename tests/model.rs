//! Whole-model checks: gradients reach every parameter, the initial loss is ln V, a
//! small model can memorise one batch, autograd agrees with finite differences in f64,
//! and KV-cache sampling equals full recomputation.

use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use tinylm::loss::CrossEntropyOptions;
use tinylm::model::{Gpt, GptConfig, Positions};
use tinylm::train::config::TrainConfig;

fn corpus_windows(b: usize, t: usize, stride: usize) -> (Tensor, Tensor) {
    let text = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/data/zh_tiny.txt")).unwrap();
    let mut x = Vec::new();
    let mut y = Vec::new();
    for i in 0..b {
        let s = 1000 + i * stride;
        x.extend(text[s..s + t].iter().map(|&c| c as u32));
        y.extend(text[s + 1..s + t + 1].iter().map(|&c| c as u32));
    }
    let dev = Device::Cpu;
    (
        Tensor::from_vec(x, (b, t), &dev).unwrap(),
        Tensor::from_vec(y, (b, t), &dev).unwrap(),
    )
}

fn tiny_config(vocab: usize, t: usize) -> GptConfig {
    GptConfig {
        vocab_size: vocab,
        block_size: t,
        n_layer: 2,
        n_head: 2,
        n_embd: 32,
        positions: Default::default(),
    }
}

#[test]
fn every_parameter_gets_a_finite_nonzero_gradient() {
    let cfg = TrainConfig::preset("default").unwrap().model;
    let model = Gpt::new(&cfg, 7, &Device::Cpu).unwrap();
    let (x, y) = corpus_windows(2, cfg.block_size, 5000);
    let loss = model.loss(&x, &y, &CrossEntropyOptions::default()).unwrap();
    let grads = loss.backward().unwrap();
    let mut bad = Vec::new();
    for (name, var) in model.params() {
        match grads.get(var.as_tensor()) {
            None => bad.push(format!("{name}: no gradient")),
            Some(g) => {
                let g: Vec<f32> = g.flatten_all().unwrap().to_vec1().unwrap();
                let max = g.iter().fold(0f32, |m, v| m.max(v.abs()));
                println!("{name:<24} max |grad| {max:.3e}");
                if g.iter().any(|v| !v.is_finite()) {
                    bad.push(format!("{name}: non-finite gradient"));
                } else if max == 0.0 {
                    bad.push(format!("{name}: all-zero gradient"));
                }
            }
        }
    }
    println!(
        "{} parameters checked, {} bad",
        model.params().len(),
        bad.len()
    );
    assert!(bad.is_empty(), "{bad:#?}");
}

#[test]
fn initial_loss_is_ln_256() {
    let cfg = TrainConfig::preset("default").unwrap().model;
    let model = Gpt::new(&cfg, 1337, &Device::Cpu).unwrap();
    let (x, y) = corpus_windows(4, cfg.block_size, 20000);
    let loss: f32 = model
        .loss(&x, &y, &CrossEntropyOptions::default())
        .unwrap()
        .to_scalar()
        .unwrap();
    let expected = (256f32).ln();
    println!("initial loss {loss:.4}, ln 256 = {expected:.4}");
    assert!(
        (loss - expected).abs() < 0.1,
        "initial loss {loss} is not within 0.1 of {expected}"
    );
}

#[test]
fn small_model_overfits_one_batch() {
    overfits_one_batch(tinylm::train::config::UpdateRule::AdamW);
}

/// The same under Muon: its step descends (a step that did not would never memorise).
#[test]
fn small_model_overfits_one_batch_under_muon() {
    overfits_one_batch(tinylm::train::config::UpdateRule::Muon);
}

fn overfits_one_batch(optimizer: tinylm::train::config::UpdateRule) {
    let cfg = GptConfig {
        vocab_size: 256,
        block_size: 32,
        n_layer: 2,
        n_head: 2,
        n_embd: 64,
        positions: Default::default(),
    };
    let model = Gpt::new(&cfg, 3, &Device::Cpu).unwrap();
    let (x, y) = corpus_windows(4, 32, 3000);
    let mut tc = TrainConfig::preset("tiny").unwrap();
    tc.weight_decay = 0.0;
    tc.optimizer = optimizer;
    let mut opt = tinylm::train::optimizer_for(&model, &tc).unwrap();
    opt.set_lr(3e-3);
    let params: Vec<Tensor> = model
        .params()
        .iter()
        .map(|(_, v)| v.as_tensor().clone())
        .collect();
    let mut loss = f32::INFINITY;
    for step in 0..400 {
        let l = model.loss(&x, &y, &CrossEntropyOptions::default()).unwrap();
        loss = l.to_scalar().unwrap();
        if loss < 0.1 {
            println!("{optimizer:?}: loss {loss:.4} < 0.1 after {step} steps");
            break;
        }
        let mut store = l.backward().unwrap();
        let grads: Vec<Option<Tensor>> = params.iter().map(|p| store.remove(p)).collect();
        opt.step_scaled(&grads, 1.0).unwrap();
    }
    assert!(
        loss < 0.1,
        "{optimizer:?}: one batch not memorised: loss {loss}"
    );
}

/// Central differences in f64 against autograd for a few entries of every parameter.
#[test]
fn model_gradients_match_finite_differences_in_f64() {
    for positions in [Positions::Learned, Positions::Rotary] {
        println!("--- positions {positions:?}");
        finite_difference_check(GptConfig {
            positions,
            ..tiny_config(13, 5)
        });
    }
}

fn finite_difference_check(cfg: GptConfig) {
    let base = Gpt::new(&cfg, 11, &Device::Cpu)
        .unwrap()
        .to_f64_reference()
        .unwrap();
    let x = Tensor::new(&[[1u32, 5, 7, 0, 12], [3, 3, 9, 2, 11]], &Device::Cpu).unwrap();
    let y = Tensor::new(&[[5u32, 7, 0, 12, 4], [3, 9, 2, 11, 6]], &Device::Cpu).unwrap();
    let opts = CrossEntropyOptions::default();
    let loss = base.loss(&x, &y, &opts).unwrap();
    let grads = loss.backward().unwrap();
    let tensors = base.named_tensors();
    let eval = |name: &str, idx: usize, delta: f64| -> f64 {
        let mut t: HashMap<String, Tensor> = tensors.clone();
        let orig = &tensors[name];
        let mut v: Vec<f64> = orig.flatten_all().unwrap().to_vec1().unwrap();
        v[idx] += delta;
        t.insert(
            name.to_string(),
            Tensor::from_vec(v, orig.shape(), &Device::Cpu).unwrap(),
        );
        let mut m = Gpt::from_tensors(&cfg, t).unwrap();
        m.reference_kernels = true;
        m.loss(&x, &y, &opts).unwrap().to_scalar::<f64>().unwrap()
    };
    let h = 1e-5;
    let mut worst = 0f64;
    for (name, var) in base.params() {
        let g: Vec<f64> = grads
            .get(var.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let n = g.len();
        let mut max_err = 0f64;
        for k in 0..4 {
            let idx = (k * 7919 + 3) % n;
            let fd = (eval(name, idx, h) - eval(name, idx, -h)) / (2.0 * h);
            let err = (fd - g[idx]).abs() / (1e-6 + fd.abs().max(g[idx].abs()));
            max_err = max_err.max(err.min((fd - g[idx]).abs() * 1e4));
        }
        println!("{name:<24} max error {max_err:.2e}");
        worst = worst.max(max_err);
    }
    println!("verdict: worst error {worst:.2e} (tolerance 1e-5)");
    assert!(
        worst < 1e-5,
        "autograd disagrees with finite differences: {worst:e}"
    );
    assert_eq!(base.params()[0].1.dtype(), DType::F64);
}

#[test]
fn fused_model_matches_reference_model() {
    let cfg = tiny_config(256, 16);
    let model = Gpt::new(&cfg, 5, &Device::Cpu).unwrap();
    let mut reference = Gpt::from_tensors(&cfg, model.named_tensors()).unwrap();
    reference.reference_kernels = true;
    let (x, y) = corpus_windows(3, 16, 777);
    let opts = CrossEntropyOptions::default();
    let a: f32 = model.loss(&x, &y, &opts).unwrap().to_scalar().unwrap();
    let b: f32 = reference.loss(&x, &y, &opts).unwrap().to_scalar().unwrap();
    println!("fused {a} reference {b}");
    assert!((a - b).abs() < 1e-4 * b.abs());
}

#[test]
fn kv_cache_sampling_equals_full_recomputation() {
    for positions in [Positions::Learned, Positions::Rotary] {
        println!("--- positions {positions:?}");
        kv_cache_check(GptConfig {
            positions,
            ..tiny_config(256, 48)
        });
    }
}

fn kv_cache_check(cfg: GptConfig) {
    let model = Gpt::new(&cfg, 9, &Device::Cpu).unwrap();
    let prompt: Vec<u32> = "春眠不觉晓".bytes().map(|b| b as u32).collect();
    for (temperature, min_p, repetition_penalty) in [(0.0, 0.0, 1.0), (1.0, 0.05, 1.2)] {
        let o = tinylm::sample::SamplingOptions {
            temperature,
            top_k: 50,
            top_p: 0.95,
            min_p,
            repetition_penalty,
            seed: 42,
        };
        // 33 new tokens after a 15-token prompt: exactly fills the context of 48.
        let cached =
            tinylm::sample::generate(&model, &prompt, 33, &o, true, &Device::Cpu, |_| {}).unwrap();
        let full =
            tinylm::sample::generate(&model, &prompt, 33, &o, false, &Device::Cpu, |_| {}).unwrap();
        assert_eq!(cached, full, "temperature {temperature}");
    }
    // The logits themselves agree closely.
    let x = Tensor::new(prompt.as_slice(), &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let all = model.logits(&x).unwrap().squeeze(0).unwrap(); // [T, V]
    let mut cache = tinylm::model::KvCache::new();
    let mut max_diff = 0f32;
    for (i, &id) in prompt.iter().enumerate() {
        let one = Tensor::new(&[[id]], &Device::Cpu).unwrap();
        let l: Vec<f32> = model
            .forward_cached(&one, &mut cache)
            .unwrap()
            .squeeze(0)
            .unwrap()
            .to_vec1()
            .unwrap();
        let r: Vec<f32> = all.get(i).unwrap().to_vec1().unwrap();
        for (a, b) in l.iter().zip(&r) {
            max_diff = max_diff.max((a - b).abs());
        }
    }
    println!("max |cached - full| logit difference {max_diff:.2e}");
    assert!(max_diff < 1e-4);
}

/// The frozen view (what evaluation and sampling use) computes the same loss bits as
/// the trainable model, records no graph (so no parameter gets a gradient from it),
/// and shares the parameters' storage (it sees an optimizer's update).
#[test]
fn frozen_view_same_loss_no_graph_shared_weights() {
    let cfg = tiny_config(256, 24);
    let model = Gpt::new(&cfg, 3, &Device::Cpu).unwrap();
    let (x, y) = corpus_windows(3, 24, 97);
    let o = CrossEntropyOptions::default();
    let live = model.loss(&x, &y, &o).unwrap().to_scalar::<f32>().unwrap();
    let frozen = model.frozen();
    let l = frozen.loss(&x, &y, &o).unwrap();
    let cold = l.to_scalar::<f32>().unwrap();
    println!("loss: trainable {live}, frozen {cold}");
    assert_eq!(live.to_bits(), cold.to_bits());
    let grads = l.backward().unwrap();
    for (name, v) in model.params() {
        assert!(grads.get(v.as_tensor()).is_none(), "{name} got a gradient");
    }
    // An update through the Var shows in the frozen view.
    let (_, wte) = &model.params()[0];
    wte.set(&(wte.as_tensor() * 0.5).unwrap()).unwrap();
    let after = frozen.loss(&x, &y, &o).unwrap().to_scalar::<f32>().unwrap();
    let live_after = model.loss(&x, &y, &o).unwrap().to_scalar::<f32>().unwrap();
    println!("after halving wte: trainable {live_after}, frozen {after}");
    assert_eq!(after.to_bits(), live_after.to_bits());
    assert_ne!(after.to_bits(), cold.to_bits());
    println!("frozen view -> PASS");
}
