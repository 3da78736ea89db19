//! The native training step (`model::native`: the whole forward and backward on raw
//! buffers, no candle graph) against candle's autograd over the same model:
//! per-tensor agreement with the f64 reference no worse than 2x the composed f32
//! reference's own error, micro-batch accumulation, bitwise repeatability, gradients on
//! every parameter, all-ignored targets, non-finite logits.

use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use tinylm::loss::CrossEntropyOptions;
use tinylm::model::native::{loss_and_grad_into, loss_and_grad_with, zero_grads};
use tinylm::model::{Gpt, GptConfig, Positions, Precision};

/// Byte windows of the tiny corpus: (inputs, targets), each B·T ids.
fn windows(b: usize, t: usize, v: usize) -> (Vec<u32>, Vec<u32>) {
    let text = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/data/zh_tiny.txt")).unwrap();
    let (mut x, mut y) = (Vec::new(), Vec::new());
    for i in 0..b {
        let s = 700 + 3001 * i;
        x.extend(text[s..s + t].iter().map(|&c| c as u32 % v as u32));
        y.extend(text[s + 1..s + t + 1].iter().map(|&c| c as u32 % v as u32));
    }
    (x, y)
}

/// Odd shapes on purpose: V and T not multiples of any vector width or tile.
fn odd_config() -> GptConfig {
    GptConfig {
        vocab_size: 203,
        block_size: 80,
        n_layer: 2,
        n_head: 2,
        n_embd: 32,
        positions: Default::default(),
    }
}

/// candle's autograd gradients of `model.loss`, as f64 vectors in parameter order.
fn graph_grads(model: &Gpt, x: &[u32], y: &[u32], b: usize, t: usize) -> (f64, Vec<Vec<f64>>) {
    let dev = Device::Cpu;
    let xt = Tensor::from_vec(x.to_vec(), (b, t), &dev).unwrap();
    let yt = Tensor::from_vec(y.to_vec(), (b, t), &dev).unwrap();
    let loss = model
        .loss(&xt, &yt, &CrossEntropyOptions::default())
        .unwrap();
    let grads = loss.backward().unwrap();
    let value = loss
        .to_dtype(DType::F64)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap();
    let gs = model
        .params()
        .iter()
        .map(|(n, v)| {
            grads
                .get(v.as_tensor())
                .unwrap_or_else(|| panic!("{n}: no gradient"))
                .to_dtype(DType::F64)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap()
        })
        .collect();
    (value, gs)
}

fn native(model: &Gpt, x: &[u32], y: &[u32], b: usize, t: usize) -> (f64, Vec<Vec<f32>>) {
    let mut g = zero_grads(model);
    let out =
        loss_and_grad_into(model, x, y, (b, t), &CrossEntropyOptions::default(), &mut g).unwrap();
    (out.loss, g)
}

/// max |a - r| / max |r|.
fn rel_err(a: impl Iterator<Item = f64> + Clone, r: &[f64]) -> f64 {
    let scale = r.iter().fold(0f64, |m, v| m.max(v.abs())).max(1e-30);
    a.zip(r).fold(0f64, |m, (a, r)| m.max((a - r).abs())) / scale
}

#[test]
fn native_step_matches_the_f64_reference_within_twice_the_f32_reference_error() {
    for positions in [Positions::Learned, Positions::Rotary] {
        println!("--- positions {positions:?}");
        native_matches_reference(GptConfig {
            positions,
            ..odd_config()
        });
    }
}

fn native_matches_reference(cfg: GptConfig) {
    let (b, t) = (3, 77);
    let model = Gpt::new(&cfg, 11, &Device::Cpu).unwrap();
    let (x, y) = windows(b, t, cfg.vocab_size);

    let (l64, g64) = graph_grads(&model.to_f64_reference().unwrap(), &x, &y, b, t);
    let mut composed = Gpt::from_tensors(&cfg, model.named_tensors()).unwrap();
    composed.reference_kernels = true;
    let (l_ref, g_ref) = graph_grads(&composed, &x, &y, b, t);
    let (l_graph, g_graph) = graph_grads(&model, &x, &y, b, t);
    let (l_nat, g_nat) = native(&model, &x, &y, b, t);

    println!("loss: f64 {l64:.9}  f32 composed {l_ref:.9}  f32 fused graph {l_graph:.9}  native {l_nat:.9}");
    assert!((l_nat - l64).abs() <= 2.0 * (l_ref - l64).abs() + 2e-6);
    println!(
        "{:<24} {:>12} {:>12} {:>12}",
        "tensor", "composed f32", "fused graph", "native"
    );
    let mut worst = 0f64;
    let mut bad = Vec::new();
    for (i, (name, _)) in model.params().iter().enumerate() {
        let e_ref = rel_err(g_ref[i].iter().copied(), &g64[i]);
        let e_graph = rel_err(g_graph[i].iter().copied(), &g64[i]);
        let e_nat = rel_err(g_nat[i].iter().map(|&v| v as f64), &g64[i]);
        println!("{name:<24} {e_ref:>12.3e} {e_graph:>12.3e} {e_nat:>12.3e}");
        // Both errors are a few f32 ulps (1e-7..1e-6); 1e-7 of slack where they are at
        // that floor.
        if e_nat > 2.0 * e_ref + 1e-7 {
            bad.push(format!(
                "{name}: native {e_nat:.3e} vs composed {e_ref:.3e}"
            ));
        }
        worst = worst.max(e_nat / (e_ref + 1e-7));
    }
    println!(
        "verdict: {} tensors, worst native/composed error ratio {worst:.2}, {} over 2x",
        g64.len(),
        bad.len()
    );
    assert!(bad.is_empty(), "{bad:#?}");
}

#[test]
fn output_head_in_several_chunks_matches_the_graph() {
    // V·N above the head's chunk (2^24 logits): chunks of 232 rows, the last one
    // shorter (300 = 232 + 68), so the logits buffer is reused at a smaller size.
    let cfg = GptConfig {
        vocab_size: 70_001,
        block_size: 150,
        n_layer: 1,
        n_head: 2,
        n_embd: 32,
        positions: Default::default(),
    };
    assert!(tinylm::loss::linear::chunk_rows(300, cfg.vocab_size) < 300);
    let (b, t) = (2, 150);
    let model = Gpt::new(&cfg, 9, &Device::Cpu).unwrap();
    let (x, y) = windows(b, t, 256);
    let (l_graph, g_graph) = graph_grads(&model, &x, &y, b, t);
    let (l_nat, g_nat) = native(&model, &x, &y, b, t);
    println!("loss: graph {l_graph:.9}, native {l_nat:.9}");
    assert!((l_nat - l_graph).abs() < 1e-5);
    for (i, (name, _)) in model.params().iter().enumerate() {
        let e = rel_err(g_nat[i].iter().map(|&v| v as f64), &g_graph[i]);
        println!("{name:<24} {e:.3e}");
        assert!(e < 1e-5, "{name}: native vs graph {e:.3e}");
    }
}

#[test]
fn micro_batches_accumulate_to_the_big_batch_gradient() {
    let cfg = odd_config();
    let (b, t) = (4, 33);
    let model = Gpt::new(&cfg, 5, &Device::Cpu).unwrap();
    let (x, y) = windows(b, t, cfg.vocab_size);
    let (big_loss, big) = native(&model, &x, &y, b, t);

    // Two micro-batches of B/2, each normalised by the whole step's B·T.
    let opts = CrossEntropyOptions {
        normalizer: Some((b * t) as f32),
        ..Default::default()
    };
    let mut acc = zero_grads(&model);
    let mut loss = 0.0;
    let half = b / 2 * t;
    for k in 0..2 {
        let r = k * half..(k + 1) * half;
        let o =
            loss_and_grad_into(&model, &x[r.clone()], &y[r], (b / 2, t), &opts, &mut acc).unwrap();
        loss += o.loss;
    }
    println!("loss: big batch {big_loss:.9}, two micro-batches {loss:.9}");
    assert!((loss - big_loss).abs() < 1e-5);
    let mut worst = 0f64;
    for (i, (name, _)) in model.params().iter().enumerate() {
        let r: Vec<f64> = big[i].iter().map(|&v| v as f64).collect();
        let e = rel_err(acc[i].iter().map(|&v| v as f64), &r);
        worst = worst.max(e);
        assert!(e < 2e-5, "{name}: relative difference {e:.3e}");
    }
    println!("verdict: worst relative difference {worst:.3e} (f32 summation order only)");
}

#[test]
fn native_step_repeats_bit_for_bit() {
    let cfg = odd_config();
    let (b, t) = (2, 80);
    let model = Gpt::new(&cfg, 3, &Device::Cpu).unwrap();
    let (x, y) = windows(b, t, cfg.vocab_size);
    let (l1, g1) = native(&model, &x, &y, b, t);
    let (l2, g2) = native(&model, &x, &y, b, t);
    assert_eq!(l1.to_bits(), l2.to_bits());
    for (a, b) in g1.iter().zip(&g2) {
        assert!(a.iter().zip(b).all(|(a, b)| a.to_bits() == b.to_bits()));
    }
}

#[test]
fn native_step_gives_every_parameter_a_finite_nonzero_gradient() {
    let (model, x, y, (b, t)) = bench_ref_case();
    let cfg = &model.config;
    let (loss, g) = native(&model, &x, &y, b, t);
    println!(
        "initial loss {loss:.4} (ln {} = {:.4})",
        cfg.vocab_size,
        (cfg.vocab_size as f64).ln()
    );
    assert_every_gradient_finite_and_nonzero(&model, &g);
}

/// The bench-ref model (seed 7) and two of its context windows: (model, x, y, (B, T)).
fn bench_ref_case() -> (Gpt, Vec<u32>, Vec<u32>, (usize, usize)) {
    let cfg = tinylm::train::config::TrainConfig::preset("bench-ref")
        .unwrap()
        .model;
    let model = Gpt::new(&cfg, 7, &Device::Cpu).unwrap();
    let (b, t) = (2, cfg.block_size);
    let (x, y) = windows(b, t, cfg.vocab_size);
    (model, x, y, (b, t))
}

/// Every parameter's gradient is finite and somewhere non-zero (the candle trap: an op
/// without backward leaves a parameter with none).
fn assert_every_gradient_finite_and_nonzero(model: &Gpt, g: &[Vec<f32>]) {
    let mut bad = Vec::new();
    for ((name, _), g) in model.params().iter().zip(g) {
        let max = g.iter().fold(0f32, |m, v| m.max(v.abs()));
        if g.iter().any(|v| !v.is_finite()) {
            bad.push(format!("{name}: non-finite"));
        } else if max == 0.0 {
            bad.push(format!("{name}: all zero"));
        }
    }
    println!("{} parameters, {} bad", g.len(), bad.len());
    assert!(bad.is_empty(), "{bad:#?}");
}

#[test]
fn all_ignored_targets_give_zero_loss_and_zero_gradients() {
    let cfg = odd_config();
    let model = Gpt::new(&cfg, 2, &Device::Cpu).unwrap();
    let (b, t) = (2, 9);
    let (x, _) = windows(b, t, cfg.vocab_size);
    let y = vec![7u32; b * t];
    let opts = CrossEntropyOptions {
        ignore_index: Some(7),
        ..Default::default()
    };
    let mut g = zero_grads(&model);
    let o = loss_and_grad_into(&model, &x, &y, (b, t), &opts, &mut g).unwrap();
    assert_eq!(o.loss, 0.0);
    assert!(g.iter().flatten().all(|&v| v == 0.0));
}

#[test]
fn non_finite_logits_report_nan_and_bad_input_is_refused() {
    let cfg = odd_config();
    let model = Gpt::new(&cfg, 2, &Device::Cpu).unwrap();
    let (b, t) = (2, 9);
    let (x, y) = windows(b, t, cfg.vocab_size);
    // Poison the final LayerNorm gain: every logit becomes NaN.
    let mut named: HashMap<String, Tensor> = model.named_tensors();
    let c = cfg.n_embd;
    named.insert(
        "ln_f.weight".into(),
        Tensor::from_vec(vec![f32::NAN; c], c, &Device::Cpu).unwrap(),
    );
    let poisoned = Gpt::from_tensors(&cfg, named).unwrap();
    let mut g = zero_grads(&poisoned);
    let o = loss_and_grad_into(
        &poisoned,
        &x,
        &y,
        (b, t),
        &CrossEntropyOptions::default(),
        &mut g,
    )
    .unwrap();
    assert!(o.loss.is_nan(), "got {}", o.loss);

    let mut g = zero_grads(&model);
    let opts = CrossEntropyOptions::default();
    let too_long = vec![0u32; 81];
    assert!(loss_and_grad_into(&model, &too_long, &too_long, (1, 81), &opts, &mut g).is_err());
    let bad_id = vec![cfg.vocab_size as u32; 4];
    assert!(loss_and_grad_into(&model, &bad_id, &bad_id, (1, 4), &opts, &mut g).is_err());
    let f64_model = model.to_f64_reference().unwrap();
    assert!(loss_and_grad_into(&f64_model, &x, &y, (b, t), &opts, &mut g).is_err());
}

fn native_bf16(model: &Gpt, x: &[u32], y: &[u32], b: usize, t: usize) -> (f64, Vec<Vec<f32>>) {
    let mut g = zero_grads(model);
    let o = CrossEntropyOptions::default();
    let out = loss_and_grad_with(model, x, y, (b, t), &o, &mut g, Precision::Bf16).unwrap();
    (out.loss, g)
}

/// `--dtype bf16`'s step (every product's factors rounded to bf16, f32 sums) against
/// the f64 reference: each tensor's gradient within bf16's precision (its relative
/// rounding is 2^-9 a factor, 2^-8 a product; the bound is 5x that), and visibly not
/// the f32 step's (so the bf16 products ran; the f32 step is within a few f32 ulps).
#[test]
fn bf16_step_matches_the_f64_reference_at_bf16_precision() {
    for positions in [Positions::Learned, Positions::Rotary] {
        let cfg = GptConfig {
            positions,
            ..odd_config()
        };
        let (b, t) = (3, 77);
        let model = Gpt::new(&cfg, 11, &Device::Cpu).unwrap();
        let (x, y) = windows(b, t, cfg.vocab_size);
        let (l64, g64) = graph_grads(&model.to_f64_reference().unwrap(), &x, &y, b, t);
        let (l32, g32) = native(&model, &x, &y, b, t);
        let (l16, g16) = native_bf16(&model, &x, &y, b, t);
        println!("--- {positions:?}: loss f64 {l64:.7}  f32 {l32:.7}  bf16 {l16:.7}");
        assert!((l16 - l64).abs() <= 1e-3 * l64, "loss {l16} vs {l64}");
        let mut bad = Vec::new();
        for (i, (name, _)) in model.params().iter().enumerate() {
            let e32 = rel_err(g32[i].iter().map(|&v| v as f64), &g64[i]);
            let e16 = rel_err(g16[i].iter().map(|&v| v as f64), &g64[i]);
            println!("{name:<24} f32 {e32:>10.3e}  bf16 {e16:>10.3e}");
            if e16.is_nan() || e16 > 2e-2 {
                bad.push(format!("{name}: bf16 error {e16:.3e}"));
            }
        }
        let e_all: f64 = (0..g64.len())
            .map(|i| rel_err(g16[i].iter().map(|&v| v as f64), &g64[i]))
            .fold(0.0, f64::max);
        assert!(
            e_all > 1e-4,
            "bf16 step agrees with f64 to {e_all:e}: not bf16 products"
        );
        assert!(bad.is_empty(), "{bad:#?}");
    }
}

#[test]
fn bf16_step_gives_every_parameter_a_finite_nonzero_gradient_and_repeats() {
    let (model, x, y, (b, t)) = bench_ref_case();
    let (loss, g) = native_bf16(&model, &x, &y, b, t);
    let (loss2, g2) = native_bf16(&model, &x, &y, b, t);
    assert_eq!(loss.to_bits(), loss2.to_bits());
    assert_eq!(g, g2, "bf16 step repeats bit for bit");
    assert_every_gradient_finite_and_nonzero(&model, &g);
}
