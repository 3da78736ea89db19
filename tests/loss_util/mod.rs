//! Shared helpers of the loss tests: a plain f64 cross-entropy written straight from
//! the definitions (the "truth" both the fused kernel and the composed f32 reference
//! are measured against), deterministic inputs and max-difference reporting.
#![allow(dead_code)]

use tinylm::loss::{CrossEntropyOptions, Reduction};

/// Deterministic pseudo-random numbers in [-1, 1) (SplitMix64), so tests need no RNG
/// state and every run sees the same inputs.
pub fn uniform(seed: u64, n: usize) -> Vec<f64> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(1);
    (0..n)
        .map(|_| {
            s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            (z >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
        })
        .collect()
}

pub fn targets(seed: u64, n: usize, v: usize) -> Vec<u32> {
    uniform(seed, n)
        .iter()
        .map(|u| (((u + 1.0) / 2.0 * v as f64) as usize).min(v - 1) as u32)
        .collect()
}

/// Row losses and d(reduced loss)/d(logits), in f64, from the textbook formulas:
/// y = c·tanh(x/c) (soft-cap), logp = y - lse(y),
/// row = -(1-ε)·logp_t - ε/V·Σ_j logp_j + z·lse², ignored rows 0;
/// reduced as mean (÷ normaliser or count, at least 1), sum, or none (gradient of the sum).
pub fn ce_f64(
    x: &[f64],
    t: &[u32],
    v: usize,
    o: &CrossEntropyOptions,
) -> (Vec<f64>, f64, Vec<f64>) {
    let n = t.len();
    let eps = o.label_smoothing as f64;
    let z = o.z_loss as f64;
    let counted = t.iter().filter(|&&ti| Some(ti) != o.ignore_index).count();
    let scale = match o.reduction {
        Reduction::Mean => {
            1.0 / (o.normalizer.map(|d| d as f64).unwrap_or(counted as f64)).max(1.0)
        }
        _ => 1.0,
    };
    let mut rows = vec![0.0; n];
    let mut grad = vec![0.0; n * v];
    for i in 0..n {
        if Some(t[i]) == o.ignore_index {
            continue;
        }
        let xr = &x[i * v..(i + 1) * v];
        let y: Vec<f64> = match o.softcap {
            Some(c) => xr
                .iter()
                .map(|&a| c as f64 * (a / c as f64).tanh())
                .collect(),
            None => xr.to_vec(),
        };
        let m = y.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let s: f64 = y.iter().map(|&a| (a - m).exp()).sum();
        let lse = m + s.ln();
        let ti = t[i] as usize;
        let mean_logp: f64 = y.iter().map(|&a| a - lse).sum::<f64>() / v as f64;
        rows[i] = -(1.0 - eps) * (y[ti] - lse) - eps * mean_logp + z * lse * lse;
        for j in 0..v {
            let p = (y[j] - lse).exp();
            let mut g = p * (1.0 + 2.0 * z * lse) - eps / v as f64;
            if j == ti {
                g -= 1.0 - eps;
            }
            if let Some(c) = o.softcap {
                let u = y[j] / c as f64;
                g *= 1.0 - u * u;
            }
            grad[i * v + j] = g * scale;
        }
    }
    let reduced = match o.reduction {
        Reduction::None => f64::NAN,
        Reduction::Sum => rows.iter().sum(),
        Reduction::Mean => rows.iter().sum::<f64>() * scale,
    };
    (rows, reduced, grad)
}

/// Max |a - b| over two slices.
pub fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

pub fn to_f64(t: &candle_core::Tensor) -> Vec<f64> {
    t.to_dtype(candle_core::DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f64>()
        .unwrap()
}

/// Every option combination the tests sweep.
pub fn option_sweep() -> Vec<(&'static str, CrossEntropyOptions)> {
    let base = CrossEntropyOptions::default();
    vec![
        ("mean", base.clone()),
        (
            "sum",
            CrossEntropyOptions {
                reduction: Reduction::Sum,
                ..base.clone()
            },
        ),
        (
            "none",
            CrossEntropyOptions {
                reduction: Reduction::None,
                ..base.clone()
            },
        ),
        (
            "ignore",
            CrossEntropyOptions {
                ignore_index: Some(2),
                ..base.clone()
            },
        ),
        (
            "smoothing",
            CrossEntropyOptions {
                label_smoothing: 0.1,
                ..base.clone()
            },
        ),
        (
            "z_loss",
            CrossEntropyOptions {
                z_loss: 1e-3,
                ..base.clone()
            },
        ),
        (
            "softcap",
            CrossEntropyOptions {
                softcap: Some(3.0),
                ..base.clone()
            },
        ),
        (
            "normalizer",
            CrossEntropyOptions {
                normalizer: Some(50.0),
                ..base.clone()
            },
        ),
        (
            "all",
            CrossEntropyOptions {
                reduction: Reduction::Sum,
                ignore_index: Some(2),
                label_smoothing: 0.2,
                z_loss: 1e-2,
                softcap: Some(2.5),
                normalizer: None,
            },
        ),
        (
            "all_mean_norm",
            CrossEntropyOptions {
                reduction: Reduction::Mean,
                ignore_index: Some(2),
                label_smoothing: 0.05,
                z_loss: 1e-4,
                softcap: Some(4.0),
                normalizer: Some(7.0),
            },
        ),
    ]
}
