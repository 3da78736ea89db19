//! Interleaved A/B timings of the layer kernels and the optimizer, and a
//! microbenchmark of glibc malloc settings for the allocation pattern of a step.
//!
//!   cargo run --release --example bench_kernels                  # kernels + AdamW
//!   cargo run --release --example bench_kernels -- alloc default # allocator, one mode
//!   cargo run --release --example bench_kernels -- alloc tuned
//!
//! Kernels: for each case, `rounds` times: run A once, then B once (after warm-up),
//! and report the medians and the median of the per-round ratios A/B. Shapes are the
//! reference GPT's: B=16, T=256, C=256, 4·C=1024, so N = 4096 rows.
//! `alloc MODE`: MODE is applied with mallopt at startup (`default` applies nothing),
//! then a step-like pattern of large allocations runs; separate processes per mode,
//! because malloc settings are process-wide and the dynamic mmap threshold of
//! glibc's default only shows from a fresh process.

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::Optimizer as _;
use std::time::Instant;
use tinylm::kernels::{self, reference};
use tinylm::train::config::UpdateRule as Rule;
use tinylm::train::optimizer::{AdamWConfig, Optimizer, ParamGroup};

use tinylm::bench::median;

fn ms(f: &mut dyn FnMut()) -> f64 {
    let t = Instant::now();
    f();
    t.elapsed().as_secs_f64() * 1e3
}

/// A, B, A, B, ...: medians of each and the median of per-round ratios A/B.
fn ab(name: &str, rounds: usize, a: &mut dyn FnMut(), b: &mut dyn FnMut()) {
    for _ in 0..3 {
        a();
        b();
    }
    let (mut ta, mut tb, mut r) = (vec![], vec![], vec![]);
    for _ in 0..rounds {
        let x = ms(a);
        let y = ms(b);
        ta.push(x);
        tb.push(y);
        r.push(x / y);
    }
    println!(
        "| {name} | {:.2} | {:.2} | {:.2}x |",
        median(&mut ta),
        median(&mut tb),
        median(&mut r)
    );
}

fn randn(shape: &[usize]) -> Tensor {
    Tensor::randn(0f32, 1.0, shape, &Device::Cpu).unwrap()
}

type Ln = fn(&Tensor, &Tensor, &Tensor, f64) -> candle_core::Result<Tensor>;
type Act = fn(&Tensor) -> candle_core::Result<Tensor>;

fn bench_kernels(rounds: usize) {
    let (n, c) = (16 * 256, 256);
    let x = Var::from_tensor(&randn(&[n, c])).unwrap();
    let g = Var::from_tensor(&(randn(&[c]) * 0.1).unwrap().affine(1.0, 1.0).unwrap()).unwrap();
    let b = Var::from_tensor(&(randn(&[c]) * 0.1).unwrap()).unwrap();
    let w = randn(&[n, c]);
    let ln_fwd = |f: Ln| {
        let y = f(x.as_tensor(), g.as_tensor(), b.as_tensor(), 1e-5).unwrap();
        std::hint::black_box(y);
    };
    // The upstream gradient is w: loss = Σ y·w. The mul, sum and the GradStore
    // bookkeeping are the same for both sides.
    let ln_fwd_bwd = |f: Ln| {
        let y = f(x.as_tensor(), g.as_tensor(), b.as_tensor(), 1e-5).unwrap();
        let grads = (y * &w).unwrap().sum_all().unwrap().backward().unwrap();
        std::hint::black_box(grads);
    };
    println!("| case | reference ms | fused ms | ratio (median of A/B) |");
    println!("|---|---|---|---|");
    // What the fwd+bwd rows spend outside the kernel: Σ x·w and its backward.
    let harness = || {
        let grads = (x.as_tensor() * &w)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        std::hint::black_box(grads);
    };
    ab(
        "harness only: backward of Σ x·w, [4096,256] (A = B)",
        rounds,
        &mut { harness },
        &mut { harness },
    );
    ab(
        "layer_norm fwd [4096,256]",
        rounds,
        &mut || ln_fwd(reference::layer_norm),
        &mut || ln_fwd(kernels::layer_norm),
    );
    ab(
        "layer_norm fwd+bwd [4096,256]",
        rounds,
        &mut || ln_fwd_bwd(reference::layer_norm),
        &mut || ln_fwd_bwd(kernels::layer_norm),
    );

    let h = Var::from_tensor(&randn(&[n, 4 * c])).unwrap();
    let wh = randn(&[n, 4 * c]);
    let harness = || {
        let grads = (h.as_tensor() * &wh)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        std::hint::black_box(grads);
    };
    ab(
        "harness only: backward of Σ h·w, [4096,1024] (A = B)",
        rounds,
        &mut { harness },
        &mut { harness },
    );
    let act_fwd = |f: Act| {
        std::hint::black_box(f(h.as_tensor()).unwrap());
    };
    let act_fwd_bwd = |f: Act| {
        let y = f(h.as_tensor()).unwrap();
        let grads = (y * &wh).unwrap().sum_all().unwrap().backward().unwrap();
        std::hint::black_box(grads);
    };
    ab(
        "gelu fwd [4096,1024]",
        rounds,
        &mut || act_fwd(reference::gelu),
        &mut || act_fwd(kernels::gelu),
    );
    ab(
        "gelu fwd+bwd [4096,1024]",
        rounds,
        &mut || act_fwd_bwd(reference::gelu),
        &mut || act_fwd_bwd(kernels::gelu),
    );
}

/// The reference GPT's parameters: per block qkv [256,768]+[768], proj [256,256]+[256],
/// fc [256,1024]+[1024], proj [1024,256]+[256], 2 LayerNorms (gain, bias [256]);
/// wte [256,256], wpe [256,256], final LayerNorm. Returns (decayed, undecayed).
fn gpt_params() -> (Vec<Var>, Vec<Var>) {
    let v = |s: &[usize]| Var::from_tensor(&(randn(s) * 0.02).unwrap()).unwrap();
    let (mut decay, mut no_decay) = (vec![], vec![]);
    for _ in 0..4 {
        for (i, o) in [(256, 768), (256, 256), (256, 1024), (1024, 256)] {
            decay.push(v(&[i, o]));
            no_decay.push(v(&[o]));
        }
        for _ in 0..4 {
            no_decay.push(v(&[256]));
        }
    }
    no_decay.extend([v(&[256, 256]), v(&[256, 256]), v(&[256]), v(&[256])]);
    (decay, no_decay)
}

fn grads_for(vars: &[&Var]) -> GradStore {
    let mut loss = Tensor::new(0f32, &Device::Cpu).unwrap();
    for v in vars {
        loss = (loss + (v.as_tensor() * 0.0).unwrap().sum_all().unwrap()).unwrap();
    }
    let mut store = loss.backward().unwrap();
    for v in vars {
        store.insert(v.as_tensor(), (randn(v.dims()) * 1e-3).unwrap());
    }
    store
}

fn bench_adamw(rounds: usize) {
    let (decay, no_decay) = gpt_params();
    let n: usize = decay.iter().chain(&no_decay).map(|v| v.elem_count()).sum();
    let all: Vec<&Var> = decay.iter().chain(&no_decay).collect();
    let grads = grads_for(&all);
    let cfg = AdamWConfig {
        lr: 1e-3,
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
    };
    let mut ours = Optimizer::new(
        vec![
            ParamGroup {
                vars: decay.clone(),
                weight_decay: 0.1,
                rule: Rule::AdamW,
            },
            ParamGroup {
                vars: no_decay.clone(),
                weight_decay: 0.0,
                rule: Rule::AdamW,
            },
        ],
        cfg,
    )
    .unwrap();
    // candle-nn has one weight decay per optimizer: two optimizers, as a trainer
    // with groups would need. Its own copies of the parameters, same gradients.
    let copy = |vs: &[Var]| -> Vec<Var> {
        vs.iter()
            .map(|v| Var::from_tensor(&v.as_tensor().copy().unwrap()).unwrap())
            .collect()
    };
    let (d2, nd2) = (copy(&decay), copy(&no_decay));
    let mut grads2 = grads_for(&d2.iter().chain(&nd2).collect::<Vec<_>>());
    for (src, dst) in all.iter().zip(d2.iter().chain(&nd2)) {
        grads2.insert(dst.as_tensor(), grads.get(src.as_tensor()).unwrap().clone());
    }
    let p = |wd| candle_nn::ParamsAdamW {
        lr: cfg.lr,
        beta1: cfg.beta1,
        beta2: cfg.beta2,
        eps: cfg.eps,
        weight_decay: wd,
    };
    let mut nn_d = candle_nn::AdamW::new(d2, p(0.1)).unwrap();
    let mut nn_nd = candle_nn::AdamW::new(nd2, p(0.0)).unwrap();
    ab(
        &format!("AdamW step, GPT params ({n} = {:.2}M)", n as f64 / 1e6),
        rounds,
        &mut || {
            nn_d.step(&grads2).unwrap();
            nn_nd.step(&grads2).unwrap();
        },
        &mut || ours.step(&grads).unwrap(),
    );
}

mod malloc {
    use std::os::raw::c_int;
    extern "C" {
        fn mallopt(param: c_int, value: c_int) -> c_int;
    }
    const M_TRIM_THRESHOLD: c_int = -1;
    const M_TOP_PAD: c_int = -2;
    const M_MMAP_THRESHOLD: c_int = -3;

    /// Applies a named set of glibc malloc settings; returns whether all were accepted.
    pub fn apply(mode: &str) -> bool {
        // SAFETY: mallopt only changes malloc parameters; called before any threads.
        unsafe {
            match mode {
                "default" => true,
                // Largest allowed threshold (32 MiB on 64-bit): buffers up to 32 MiB
                // come from the heap; freed memory is kept for reuse (no trim).
                "threshold32m" => {
                    mallopt(M_MMAP_THRESHOLD, 32 << 20) == 1
                        && mallopt(M_TRIM_THRESHOLD, 1 << 30) == 1
                        && mallopt(M_TOP_PAD, 64 << 20) == 1
                }
                // The recommendation: never mmap, keep the heap top for reuse.
                "tuned" => tinylm::cpu::tune_glibc_malloc(),
                other => panic!("unknown malloc mode {other}"),
            }
        }
    }
}

/// Minor page faults of this process so far (field 10 of /proc/self/stat).
fn minor_faults() -> u64 {
    let s = std::fs::read_to_string("/proc/self/stat").unwrap();
    let after = &s[s.rfind(')').unwrap() + 2..];
    after.split(' ').nth(7).unwrap().parse().unwrap()
}

fn peak_rss_mb() -> f64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = s.lines().find(|l| l.starts_with("VmHWM")).unwrap();
    let kb: f64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kb / 1024.0
}

/// The allocation pattern of a training step, at the reference GPT's sizes: a
/// "forward" keeps every activation of 2 blocks alive (4 MiB = [4096,256], 12 MiB =
/// [4096,768], 16 MiB = [4096,1024] or the B·H·T·T attention scores), then a
/// "backward" walks them in reverse, allocating a gradient of the same size for each,
/// and frees both. Every buffer is written once and read once. No buffer is above
/// glibc's 32 MiB mmap ceiling: the faults measured come from heap trimming and the
/// dynamic mmap threshold, not from huge buffers.
fn alloc_pattern() -> f32 {
    const MB: usize = 1 << 20;
    let block = [4, 12, 16, 16, 16, 4, 16, 4];
    let fill = |n: usize, k: usize| -> Vec<f32> {
        let mut v = Vec::with_capacity(n);
        v.extend((0..n).map(|j| (j + k) as f32));
        v
    };
    let mut acc = 0f32;
    let mut saved: Vec<Vec<f32>> = Vec::new();
    for (k, &s) in block.iter().chain(&block).enumerate() {
        saved.push(fill(s * MB / 4, k));
    }
    while let Some(act) = saved.pop() {
        let grad = fill(act.len(), 1);
        acc += act.iter().step_by(4096).sum::<f32>() + grad[grad.len() / 2];
    }
    acc
}

fn bench_alloc(mode: &str, rounds: usize) {
    let ok = malloc::apply(mode);
    for _ in 0..3 {
        std::hint::black_box(alloc_pattern());
    }
    let f0 = minor_faults();
    let mut ts = vec![];
    for _ in 0..rounds {
        let t = Instant::now();
        std::hint::black_box(alloc_pattern());
        ts.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let faults = (minor_faults() - f0) as f64 / rounds as f64;
    println!(
        "alloc mode={mode} (mallopt accepted: {ok}): median {:.2} ms per pattern, {faults:.0} minor faults per pattern, peak RSS {:.0} MiB",
        median(&mut ts),
        peak_rss_mb()
    );
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rounds = std::env::var("ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(21);
    match args.first().map(String::as_str) {
        Some("alloc") => bench_alloc(args.get(1).map_or("default", |s| s), rounds),
        Some("kernels-tuned") | None | Some("kernels") => {
            if args.first().map(String::as_str) == Some("kernels-tuned") {
                assert!(malloc::apply("tuned"));
            }
            println!(
                "rayon threads: {}, DType {:?}, rounds {rounds}",
                rayon::current_num_threads(),
                DType::F32
            );
            bench_kernels(rounds);
            bench_adamw(rounds);
        }
        // For profiling (perf record): the fused fwd+bwd of one kernel in a loop.
        Some("loop") => {
            let h = Var::from_tensor(&randn(&[16 * 256, 1024])).unwrap();
            let w = randn(&[16 * 256, 1024]);
            for _ in 0..rounds {
                let y = kernels::gelu(h.as_tensor()).unwrap();
                let grads = (y * &w).unwrap().sum_all().unwrap().backward().unwrap();
                std::hint::black_box(grads);
            }
        }
        Some(other) => panic!("unknown case {other}"),
    }
}
