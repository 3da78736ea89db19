//! `tinylm bench loss [--json]`: the fused cross-entropy kernels against the composed
//! reference, on the case names of `shared/bench/torch_reference.py`.
//!
//! Cases: `ce_fwd_NxV`, `ce_fwdbwd_NxV` for N x V in 16384x256, 8192x8192, 4096x32768,
//! 4096x50304, `ce_fwdbwd_{bf16,f16}_NxV` for those with V ≥ 8192 (see `half_case`),
//! and `linear_ce_fwdbwd_4096x50304_d512`. Implementations, timed
//! interleaved (one call of each in turn, repeated) so that machine noise hits all alike
//! (for `ce_fwdbwd`, the two kernel variants and the two graph paths as separate groups,
//! see `ce_cases`):
//!
//! * `fused`: for `ce_fwd`, [`loss::cross_entropy`] on logits that need no gradient; for
//!   `ce_fwdbwd`, [`loss::cross_entropy_loss_and_grad`] (loss and d(logits), one pass);
//!   for `linear_ce_fwdbwd`, [`loss::linear_cross_entropy`] + `backward()` to hidden and
//!   weight.
//! * `fused_reuse` (ce_fwdbwd only): [`loss::cross_entropy_loss_and_grad_into`], the
//!   same kernel writing into a gradient buffer reused across calls (no page faults).
//! * `fused_autograd` (ce_fwdbwd only): [`loss::cross_entropy`] on a `Var` + candle's
//!   `backward()`, i.e. the fused kernel plus candle's gradient store (which adds a
//!   zero-filled [N, V] accumulator and an [N, V] add).
//! * `reference`: the composed candle ops of [`loss::reference`], with `backward()`.
//! * `matmuls` (linear case only): the three products the fused op is built on, h·Wᵀ,
//!   G·W and Gᵀ·h, at the same shapes: the floor the 1.2x target is measured against.
//!
//! Memory: peak live heap bytes during one call minus before it (inputs already built),
//! from the counting allocator. Bandwidth: a read+write stream (b = 1.0001·a over 2 x 512
//! MiB) measured in the same run gives the floor 8·N·V bytes / bandwidth for fwd+bwd
//! (4·N·V for fwd and for the 16-bit fwd+bwd); `pct_of_floor` is floor time / measured
//! time.

use super::{alloc, median, BenchArgs};
use crate::loss::{self, reference, CrossEntropyOptions};
use candle_core::{DType, Device, Tensor, Var};
use rayon::prelude::*;
use serde::Serialize;
use std::time::Instant;

/// One result row; the first six fields are the record every bench prints.
#[derive(Debug, Clone, Serialize)]
pub struct Record {
    pub case: String,
    #[serde(rename = "impl")]
    pub imp: String,
    pub median_ms: f64,
    pub tokens_per_s: f64,
    pub gb_per_s: f64,
    pub peak_extra_bytes: usize,
    /// Bandwidth-floor time / measured time (CE cases), percent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pct_of_floor: Option<f64>,
    /// Matmul throughput (linear case), GFLOP/s counting 3 · 2·N·V·D.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gflops: Option<f64>,
    /// The f32 kernel's median over this one's, timed interleaved (16-bit cases).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub speedup_vs_f32: Option<f64>,
    pub reps: usize,
    pub threads: usize,
}

/// Read+write bandwidth in GB/s (10^9 B/s), counting 8 bytes per element as the CE
/// floor does: b[i] = 1.0001·a[i] over `bytes`/8 f32 elements in each of a and b, on
/// the rayon threads, median of 5 after a warm-up (both buffers pre-touched).
pub fn measure_bandwidth(bytes: usize) -> f64 {
    let n = bytes / 8;
    let a = vec![1.0f32; n];
    let mut b = vec![0.0f32; n];
    // Streaming stores, as the kernel's gradient writes: a plain store loop would also
    // read every destination line first (write-allocate), moving 12 bytes per element
    // while 8 are counted, and understate the bandwidth by up to a third.
    let mut run = || {
        b.par_chunks_mut(1 << 16)
            .zip(a.par_chunks(1 << 16))
            .for_each(|(d, s)| crate::loss::kernel::stream_scale_f32(d, s, 1.0001));
    };
    run();
    let mut ts: Vec<f64> = (0..5)
        .map(|_| {
            let t = Instant::now();
            run();
            t.elapsed().as_secs_f64()
        })
        .collect();
    std::hint::black_box(&b);
    (8 * n) as f64 / median(&mut ts) / 1e9
}

type BoxFn<'a> = Box<dyn FnMut() -> anyhow::Result<()> + 'a>;

/// Times the implementations interleaved: `warmup` rounds, then `rounds` rounds of one
/// call each in turn. The first warm-up call of each also measures its peak extra heap.
/// Returns (name, median ms, samples, peak extra bytes).
fn interleaved(
    impls: &mut [(&str, BoxFn<'_>)],
    warmup: usize,
    rounds: usize,
) -> anyhow::Result<Vec<(String, f64, usize, usize)>> {
    let mut peaks = vec![0usize; impls.len()];
    for w in 0..warmup.max(1) {
        for (k, (_, f)) in impls.iter_mut().enumerate() {
            let base = alloc::reset_peak();
            f()?;
            if w == 0 {
                peaks[k] = alloc::peak_since(base);
            }
        }
    }
    let mut samples = vec![Vec::new(); impls.len()];
    for _ in 0..rounds {
        for (k, (_, f)) in impls.iter_mut().enumerate() {
            let t = Instant::now();
            f()?;
            samples[k].push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    Ok(impls
        .iter()
        .zip(samples.iter_mut())
        .zip(peaks)
        .map(|(((name, _), s), p)| (name.to_string(), median(s), s.len(), p))
        .collect())
}

/// Deterministic logits ~ 2·N(0,1)-ish (sum of uniforms), as the PyTorch cases use
/// `randn·2`, and targets uniform in [0, V).
fn inputs(n: usize, v: usize) -> anyhow::Result<(Tensor, Tensor)> {
    let mut s: u64 = 0x2545_F491_4F6C_DD1D;
    let mut next = || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    };
    let x: Vec<f32> = (0..n * v)
        .map(|_| {
            let r = next();
            // Irwin-Hall(4) in [-2, 2], variance 1/3 per uniform: scale to std ≈ 2.
            let u = ((r & 0xFFFF) + ((r >> 16) & 0xFFFF) + ((r >> 32) & 0xFFFF) + (r >> 48)) as f32
                / 65536.0
                - 2.0;
            u * 3.4641
        })
        .collect();
    let t: Vec<u32> = (0..n).map(|_| (next() % v as u64) as u32).collect();
    Ok((
        Tensor::from_vec(x, (n, v), &Device::Cpu)?,
        Tensor::from_vec(t, n, &Device::Cpu)?,
    ))
}

/// A cross-entropy record: `bytes` is the bandwidth floor's traffic (4·N·V for the
/// forward, 8·N·V for forward + backward) at `bw` GB/s.
#[allow(clippy::too_many_arguments)]
/// One CE record from an [`interleaved`] timing: `bytes` moved a call (the floor's),
/// `bw` the measured bandwidth in GB/s.
fn ce_record(
    case: &str,
    n: usize,
    (bytes, bw, threads): (f64, f64, usize),
    (imp, ms, reps, peak): (String, f64, usize, usize),
) -> Record {
    Record {
        case: case.to_string(),
        imp,
        median_ms: ms,
        tokens_per_s: n as f64 / (ms / 1e3),
        gb_per_s: bytes / (ms / 1e3) / 1e9,
        peak_extra_bytes: peak,
        pct_of_floor: Some(100.0 * (bytes / (bw * 1e9)) / (ms / 1e3)),
        gflops: None,
        speedup_vs_f32: None,
        reps,
        threads,
    }
}

fn ce_cases(
    args: &BenchArgs,
    bw: f64,
    threads: usize,
    out: &mut Vec<Record>,
) -> anyhow::Result<()> {
    let o = CrossEntropyOptions::default();
    let wanted = |name: &str| args.filter.as_deref().is_none_or(|f| selects(f, name));
    for &(n, v) in ce_shapes(args.quick) {
        let (x, t) = inputs(n, v)?;
        let big = n * v >= 100_000_000;
        let (warmup, rounds) = if args.quick {
            (1, 2)
        } else if big {
            (1, 5)
        } else {
            (2, 9)
        };
        let fwd = ce_name("fwd", n, v);
        if wanted(&fwd) {
            let mut impls: Vec<(&str, BoxFn)> = vec![
                (
                    "fused",
                    Box::new(|| {
                        std::hint::black_box(loss::cross_entropy(&x, &t, &o)?);
                        Ok(())
                    }),
                ),
                (
                    "reference",
                    Box::new(|| {
                        std::hint::black_box(reference::cross_entropy(&x, &t, &o)?);
                        Ok(())
                    }),
                ),
            ];
            let floor = (4.0 * (n * v) as f64, bw, threads);
            for r in interleaved(&mut impls, warmup, rounds)? {
                out.push(ce_record(&fwd, n, floor, r));
            }
        }
        let fb = ce_name("fwdbwd", n, v);
        if wanted(&fb) {
            let var = Var::from_tensor(&x)?;
            let mut buf = vec![0f32; n * v];
            // Two groups, each interleaved within itself: the kernel with a fresh and
            // with a reused gradient buffer, then the graph paths. Interleaving all four
            // made every fresh-buffer call page-fault: the reference frees ~3x N·V·4
            // bytes between the fused calls, and with the heap trimmed above 1 GiB that
            // went back to the OS each round. `tinylm bench` no longer trims at all, but
            // `examples/bench_loss.rs` (`tune_glibc_malloc` alone) still does. (PyTorch's
            // script runs each case in its own process.)
            let mut kernel_impls: Vec<(&str, BoxFn)> = vec![
                (
                    "fused",
                    Box::new(|| {
                        std::hint::black_box(loss::cross_entropy_loss_and_grad(&x, &t, &o)?);
                        Ok(())
                    }),
                ),
                (
                    "fused_reuse",
                    Box::new(|| {
                        std::hint::black_box(loss::cross_entropy_loss_and_grad_into(
                            &x, &t, &o, &mut buf,
                        )?);
                        Ok(())
                    }),
                ),
            ];
            let mut graph_impls: Vec<(&str, BoxFn)> = vec![
                (
                    "fused_autograd",
                    Box::new(|| {
                        let l = loss::cross_entropy(var.as_tensor(), &t, &o)?;
                        std::hint::black_box(l.backward()?);
                        Ok(())
                    }),
                ),
                (
                    "reference",
                    Box::new(|| {
                        let l = reference::cross_entropy(var.as_tensor(), &t, &o)?;
                        std::hint::black_box(l.backward()?);
                        Ok(())
                    }),
                ),
            ];
            let mut results = interleaved(&mut kernel_impls, warmup, rounds)?;
            drop(kernel_impls);
            results.extend(interleaved(&mut graph_impls, warmup, rounds)?);
            let floor = (8.0 * (n * v) as f64, bw, threads);
            for r in results {
                out.push(ce_record(&fb, n, floor, r));
            }
        }
        if has_half_cases(v) {
            for dt in [DType::BF16, DType::F16] {
                let case = ce_name(&format!("fwdbwd_{}", dtype_name(dt)), n, v);
                if wanted(&case) {
                    let rounds = (warmup, rounds);
                    half_case(&case, (n, v), dt, (&x, &t), &o, rounds, bw, threads, out)?;
                }
            }
        }
    }
    Ok(())
}

/// The (N, V) of the cross-entropy cases.
fn ce_shapes(quick: bool) -> &'static [(usize, usize)] {
    if quick {
        &[(512, 256), (64, 8192)]
    } else {
        &[(16384, 256), (8192, 8192), (4096, 32768), (4096, 50304)]
    }
}

/// 16-bit logits matter at large vocabularies only.
fn has_half_cases(v: usize) -> bool {
    v >= 8192
}

/// `ce_{pass}_{N}x{V}`, e.g. `ce_fwdbwd_bf16_64x8192`.
fn ce_name(pass: &str, n: usize, v: usize) -> String {
    format!("ce_{pass}_{n}x{v}")
}

/// The (N, V, D) of the linear + cross-entropy case.
fn linear_shape(quick: bool) -> (usize, usize, usize) {
    if quick {
        (256, 4096, 64)
    } else {
        (4096, 50304, 512)
    }
}

fn linear_name((n, v, d): (usize, usize, usize)) -> String {
    format!("linear_ce_fwdbwd_{n}x{v}_d{d}")
}

/// Every case name, in run order.
pub fn case_names(quick: bool) -> Vec<String> {
    let mut names = Vec::new();
    for &(n, v) in ce_shapes(quick) {
        names.push(ce_name("fwd", n, v));
        names.push(ce_name("fwdbwd", n, v));
        if has_half_cases(v) {
            for dt in [DType::BF16, DType::F16] {
                names.push(ce_name(&format!("fwdbwd_{}", dtype_name(dt)), n, v));
            }
        }
    }
    names.push(linear_name(linear_shape(quick)));
    names
}

/// `--filter`: the cases whose name contains it.
fn selects(filter: &str, name: &str) -> bool {
    name.contains(filter)
}

fn dtype_name(dt: DType) -> &'static str {
    match dt {
        DType::BF16 => "bf16",
        DType::F16 => "f16",
        _ => "f32",
    }
}

/// `ce_fwdbwd_{bf16,f16}_NxV`: the kernel on 16-bit logits writing a 16-bit gradient
/// (`fused`: a fresh one, `fused_reuse`: the caller's buffer), interleaved with the f32
/// kernel on the same logits (`f32_fused`, `f32_fused_reuse`) so that the speed-up
/// comes from one sitting. Every record's floor is the 16-bit one, 4·N·V bytes (2 read,
/// 2 written per element); `speedup_vs_f32` is the f32 twin's median over this one's.
#[allow(clippy::too_many_arguments)]
fn half_case(
    case: &str,
    (n, v): (usize, usize),
    dt: DType,
    (x32, t): (&Tensor, &Tensor),
    o: &CrossEntropyOptions,
    (warmup, rounds): (usize, usize),
    bw: f64,
    threads: usize,
    out: &mut Vec<Record>,
) -> anyhow::Result<()> {
    let x = x32.to_dtype(dt)?;
    let mut buf32 = vec![0f32; n * v];
    let mut buf_bf16 = vec![half::bf16::ZERO; if dt == DType::BF16 { n * v } else { 0 }];
    let mut buf_f16 = vec![half::f16::ZERO; if dt == DType::F16 { n * v } else { 0 }];
    let mut impls: Vec<(&str, BoxFn)> = vec![
        (
            "fused",
            Box::new(|| {
                std::hint::black_box(loss::cross_entropy_loss_and_grad(&x, t, o)?);
                Ok(())
            }),
        ),
        (
            "f32_fused",
            Box::new(|| {
                std::hint::black_box(loss::cross_entropy_loss_and_grad(x32, t, o)?);
                Ok(())
            }),
        ),
        (
            "fused_reuse",
            Box::new(|| {
                std::hint::black_box(if dt == DType::BF16 {
                    loss::cross_entropy_loss_and_grad_into(&x, t, o, &mut buf_bf16)?
                } else {
                    loss::cross_entropy_loss_and_grad_into(&x, t, o, &mut buf_f16)?
                });
                Ok(())
            }),
        ),
        (
            "f32_fused_reuse",
            Box::new(|| {
                std::hint::black_box(loss::cross_entropy_loss_and_grad_into(
                    x32, t, o, &mut buf32,
                )?);
                Ok(())
            }),
        ),
    ];
    let res = interleaved(&mut impls, warmup, rounds)?;
    let ms_of = |name: &str| res.iter().find(|r| r.0 == name).map(|r| r.1);
    for t in res.iter().cloned() {
        let mut r = ce_record(case, n, (4.0 * (n * v) as f64, bw, threads), t);
        if !r.imp.starts_with("f32_") {
            r.speedup_vs_f32 = ms_of(&format!("f32_{}", r.imp)).map(|f| f / r.median_ms);
        }
        out.push(r);
    }
    Ok(())
}

fn linear_case(args: &BenchArgs, threads: usize, out: &mut Vec<Record>) -> anyhow::Result<()> {
    let (n, v, d) = linear_shape(args.quick);
    let case = linear_name((n, v, d));
    if !args.filter.as_deref().is_none_or(|f| selects(f, &case)) {
        return Ok(());
    }
    let (h0, t) = inputs(n, d)?;
    let t = (t.to_dtype(candle_core::DType::F64)? * (v as f64 / d as f64))?
        .floor()?
        .to_dtype(candle_core::DType::U32)?;
    let (w0, _) = inputs(v, d)?;
    let w0 = (w0 * (0.5 / (d as f64).sqrt()))?; // randn · d^-1/2 as in the PyTorch case
    let h0 = (h0 * 0.5)?; // randn
    let (h, w) = (Var::from_tensor(&h0)?, Var::from_tensor(&w0)?);
    let o = CrossEntropyOptions::default();
    // A gradient-shaped [N, V] operand for the two backward products.
    let g = Tensor::zeros((n, v), candle_core::DType::F32, &Device::Cpu)?;
    let mut impls: Vec<(&str, BoxFn)> = vec![
        (
            "fused",
            Box::new(|| {
                let l = loss::linear_cross_entropy(h.as_tensor(), w.as_tensor(), &t, &o)?;
                std::hint::black_box(l.backward()?);
                Ok(())
            }),
        ),
        (
            "matmuls",
            Box::new(|| {
                std::hint::black_box(h0.matmul(&w0.t()?)?); // [N, D] x [D, V]
                std::hint::black_box(g.matmul(&w0)?); // [N, V] x [V, D]
                std::hint::black_box(g.t()?.matmul(&h0)?); // [V, N] x [N, D]
                Ok(())
            }),
        ),
        (
            "reference",
            Box::new(|| {
                let l = reference::linear_cross_entropy(h.as_tensor(), w.as_tensor(), &t, &o)?;
                std::hint::black_box(l.backward()?);
                Ok(())
            }),
        ),
    ];
    let rounds = if args.quick { 2 } else { 3 };
    for (imp, ms, reps, peak) in interleaved(&mut impls, 1, rounds)? {
        let flops = 3.0 * 2.0 * (n * v * d) as f64;
        out.push(Record {
            case: case.clone(),
            imp,
            median_ms: ms,
            tokens_per_s: n as f64 / (ms / 1e3),
            // Logits-equivalent traffic (8·N·V), for comparison with the CE cases.
            gb_per_s: 8.0 * (n * v) as f64 / (ms / 1e3) / 1e9,
            peak_extra_bytes: peak,
            pct_of_floor: None,
            gflops: Some(flops / (ms / 1e3) / 1e9),
            speedup_vs_f32: None,
            reps,
            threads,
        });
    }
    Ok(())
}

/// Runs the loss bench cases.
pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
    let records = collect(args)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&records)?);
    }
    Ok(())
}

/// Runs the cases and returns the records; prints the table unless `args.json`.
pub fn collect(args: &BenchArgs) -> anyhow::Result<Vec<Record>> {
    super::check_filter(args, &case_names(args.quick), selects)?;
    if !alloc::installed() {
        eprintln!("note: the counting allocator is not installed; peak_extra_bytes will read 0");
    }
    let threads = rayon::current_num_threads();
    let bw = measure_bandwidth(if args.quick { 64 << 20 } else { 1 << 30 });
    if args.json {
        eprintln!("loss bench: {threads} rayon threads, measured read+write bandwidth {bw:.1} GB/s (8 B/element)");
    } else {
        println!("loss bench: {threads} rayon threads, measured read+write bandwidth {bw:.1} GB/s (8 B/element)");
    }
    let mut out = Vec::new();
    ce_cases(args, bw, threads, &mut out)?;
    linear_case(args, threads, &mut out)?;
    if !args.json {
        println!(
            "{:<36} {:<15} {:>10} {:>12} {:>8} {:>8} {:>12} {:>8}",
            "case", "impl", "median_ms", "tokens/s", "GB/s", "%floor", "peak_MB", "vs_f32"
        );
        for r in &out {
            let extra = match (r.pct_of_floor, r.gflops) {
                (Some(p), _) => format!("{p:.0}%"),
                (None, Some(g)) => format!("{g:.0}GF"),
                _ => String::new(),
            };
            let vs = r
                .speedup_vs_f32
                .map(|s| format!("{s:.2}x"))
                .unwrap_or_default();
            println!(
                "{:<36} {:<15} {:>10.2} {:>12.4e} {:>8.2} {:>8} {:>12.1} {:>8}",
                r.case,
                r.imp,
                r.median_ms,
                r.tokens_per_s,
                r.gb_per_s,
                extra,
                r.peak_extra_bytes as f64 / (1 << 20) as f64,
                vs
            );
        }
    }
    Ok(out)
}
