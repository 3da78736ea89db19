//! `tinylm bench attention`: the fused attention kernel against the composed reference.
//!
//! Cases (B, H, T, D; the same names as `../shared/bench/torch_reference.py`):
//! `attn_fwd_BxHxTxD` (no gradient tracked) and `attn_fwdbwd_BxHxTxD` (forward, then
//! backward of sum(O ∘ G) to q, k, v) for (8, 8, 256, 64) and (2, 8, 1024, 64); then a
//! sweep of T from 128 to 2048 at B·T = 16384 tokens, H = 8, D = 64, with the fused kernel
//! both causal and non-causal (`attn_*_noncausal_*`) and, up to T = 256, the reference
//! (beyond, its B·H·T·T buffers need gigabytes).
//!
//! FLOPs are counted the FlashAttention way: forward 4·B·H·T²·D, halved when causal,
//! backward 2.5x the forward, so `gflops` compares implementations at equal work.
//! `median_ms` is the median of the per-round medians of interleaved rounds (reference,
//! fused, reference, fused, ...), so that machine noise hits both alike.
//! `peak_extra_bytes` is the peak heap growth during one call (inputs excluded).
//!
//! Implementations: `reference` (composed candle ops), `fused` (the candle op, backward
//! through candle's graph: O∘G, the sum and candle's gradient store around the kernel)
//! and `fused_native` (the same kernel through its slice entry points, forward then
//! backward given dO = G, as the training step calls it).

use super::{alloc, time_median_ms, BenchArgs};
use crate::attention::{fused, kernel, reference, FusedOptions};
use candle_core::{Device, Tensor, Var};

/// One measured row.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Record {
    pub case: String,
    #[serde(rename = "impl")]
    pub imp: String,
    pub median_ms: f64,
    pub gflops: f64,
    pub peak_extra_bytes: usize,
}

#[derive(Clone, Copy, PartialEq)]
enum Imp {
    /// The candle op: `fused::attention`, with `backward()` through candle's graph.
    Fused,
    /// The same kernel as the training step calls it (`model::native`): the slice
    /// entry points, forward then backward given dO, no candle graph around them.
    FusedNative,
    Reference,
}

impl Imp {
    fn name(self) -> &'static str {
        match self {
            Imp::Fused => "fused",
            Imp::FusedNative => "fused_native",
            Imp::Reference => "reference",
        }
    }
}

#[derive(Clone, Copy)]
struct Shape {
    b: usize,
    h: usize,
    t: usize,
    d: usize,
}

/// FlashAttention FLOP count for one call.
fn flops(s: Shape, fwdbwd: bool, causal: bool) -> f64 {
    let fwd = 4.0 * (s.b * s.h) as f64 * (s.t * s.t) as f64 * s.d as f64;
    let fwd = if causal { fwd / 2.0 } else { fwd };
    if fwdbwd {
        fwd * 3.5
    } else {
        fwd
    }
}

fn attn(imp: Imp, causal: bool, q: &Tensor, k: &Tensor, v: &Tensor) -> candle_core::Result<Tensor> {
    match (imp, causal) {
        (Imp::FusedNative, _) => unreachable!("make_case calls the slice entry points"),
        (Imp::Fused, c) => fused::attention(
            q,
            k,
            v,
            FusedOptions {
                causal: c,
                ..Default::default()
            },
        ),
        (Imp::Reference, true) => reference::causal_attention(q, k, v),
        (Imp::Reference, false) => {
            let s = (q.matmul(&k.t()?)? / (q.dim(3)? as f64).sqrt())?;
            candle_nn::ops::softmax(&s, candle_core::D::Minus1)?.matmul(v)
        }
    }
}

/// Builds the inputs and returns a closure doing one call (forward, or forward and
/// backward with the gradients dropped at the end of the call).
fn make_case(s: Shape, fwdbwd: bool, causal: bool, imp: Imp) -> anyhow::Result<Box<dyn FnMut()>> {
    let dev = Device::Cpu;
    let shape = (s.b, s.h, s.t, s.d);
    let q = Var::from_tensor(&Tensor::randn(0f32, 1., shape, &dev)?)?;
    let k = Var::from_tensor(&Tensor::randn(0f32, 1., shape, &dev)?)?;
    let v = Var::from_tensor(&Tensor::randn(0f32, 1., shape, &dev)?)?;
    let g = Tensor::randn(0f32, 1., shape, &dev)?;
    let (qd, kd, vd) = (
        q.as_tensor().detach(),
        k.as_tensor().detach(),
        v.as_tensor().detach(),
    );
    if imp == Imp::FusedNative {
        let flat = |t: &Tensor| t.flatten_all()?.to_vec1::<f32>();
        let (qs, ks, vs, gs) = (flat(&qd)?, flat(&kd)?, flat(&vd)?, flat(&g)?);
        let dims = (s.b * s.h, s.t, s.d);
        return Ok(Box::new(move || {
            let (o, lse) = kernel::self_attention_forward_f32(dims, causal, &qs, &ks, &vs);
            if fwdbwd {
                let grads =
                    kernel::self_attention_backward_f32(dims, causal, &qs, &ks, &vs, &o, &gs, &lse);
                std::hint::black_box(grads);
            }
            std::hint::black_box((o, lse));
        }));
    }
    Ok(Box::new(move || {
        if fwdbwd {
            let o = attn(imp, causal, q.as_tensor(), k.as_tensor(), v.as_tensor()).unwrap();
            let grads = (o * &g).unwrap().sum_all().unwrap().backward().unwrap();
            assert!(grads.get(q.as_tensor()).is_some());
        } else {
            let o = attn(imp, causal, &qd, &kd, &vd).unwrap();
            std::hint::black_box(o);
        }
    }))
}

fn case_name(s: Shape, fwdbwd: bool, causal: bool) -> String {
    format!(
        "attn_{}{}_{}x{}x{}x{}",
        if fwdbwd { "fwdbwd" } else { "fwd" },
        if causal { "" } else { "_noncausal" },
        s.b,
        s.h,
        s.t,
        s.d
    )
}

/// Measures every implementation of one case in `rounds` interleaved rounds.
fn measure(
    s: Shape,
    fwdbwd: bool,
    causal: bool,
    imps: &[Imp],
    args: &BenchArgs,
) -> anyhow::Result<Vec<Record>> {
    let rounds = if args.quick { 1 } else { 3 };
    let target_s = if args.quick { 0.05 } else { 0.5 };
    let mut fns = Vec::new();
    let mut peaks = Vec::new();
    for &imp in imps {
        let mut f = make_case(s, fwdbwd, causal, imp)?;
        f(); // warm-up (thread pool, page faults)
        let base = alloc::reset_peak();
        f();
        peaks.push(alloc::peak_since(base));
        fns.push(f);
    }
    let mut times = vec![Vec::new(); imps.len()];
    for _ in 0..rounds {
        for (i, f) in fns.iter_mut().enumerate() {
            times[i].push(time_median_ms(0, 3, target_s, &mut *f));
        }
    }
    let fl = flops(s, fwdbwd, causal);
    Ok(imps
        .iter()
        .enumerate()
        .map(|(i, &imp)| {
            let ms = super::median(&mut times[i]);
            Record {
                case: case_name(s, fwdbwd, causal),
                imp: imp.name().into(),
                median_ms: ms,
                gflops: fl / (ms * 1e-3) / 1e9,
                peak_extra_bytes: peaks[i],
            }
        })
        .collect())
}

/// Runs the cases (all, or those whose name contains `args.filter`) and returns the
/// records; prints a table line per record as it goes unless `quiet`.
pub fn collect(args: &BenchArgs, quiet: bool) -> anyhow::Result<Vec<Record>> {
    let plan = plan(args.quick);
    let names: Vec<String> = plan
        .iter()
        .flat_map(|&(s, causal, _)| [false, true].map(|fwdbwd| case_name(s, fwdbwd, causal)))
        .collect();
    super::check_filter(args, &names, selects)?;
    let mut out = Vec::new();
    for (s, causal, imps) in plan {
        for fwdbwd in [false, true] {
            let name = case_name(s, fwdbwd, causal);
            if args.filter.as_deref().is_some_and(|f| !selects(f, &name)) {
                continue;
            }
            for r in measure(s, fwdbwd, causal, &imps, args)? {
                if !quiet {
                    println!(
                        "{:<34} {:<9} {:>10.3} ms {:>8.2} GFLOP/s {:>12} B extra",
                        r.case, r.imp, r.median_ms, r.gflops, r.peak_extra_bytes
                    );
                }
                out.push(r);
            }
        }
    }
    Ok(out)
}

/// `--filter`: the cases whose name contains one of its comma-separated parts.
fn selects(filter: &str, name: &str) -> bool {
    filter.split(',').any(|part| name.contains(part))
}

/// The cases: (shape, causal, implementations), each run forward and forward+backward.
fn plan(quick: bool) -> Vec<(Shape, bool, Vec<Imp>)> {
    let both = [Imp::Reference, Imp::Fused, Imp::FusedNative];
    let mut plan: Vec<(Shape, bool, Vec<Imp>)> = Vec::new();
    if quick {
        plan.push((
            Shape {
                b: 2,
                h: 2,
                t: 128,
                d: 32,
            },
            true,
            both.to_vec(),
        ));
    } else {
        for (b, t) in [(8, 256), (2, 1024)] {
            plan.push((Shape { b, h: 8, t, d: 64 }, true, both.to_vec()));
        }
        for t in [128, 256, 512, 1024, 2048] {
            let s = Shape {
                b: 16384 / t,
                h: 8,
                t,
                d: 64,
            };
            let imps = if t <= 256 {
                both.to_vec()
            } else {
                vec![Imp::Fused, Imp::FusedNative]
            };
            plan.push((s, true, imps));
            plan.push((s, false, vec![Imp::Fused, Imp::FusedNative]));
        }
    }
    plan
}

/// Runs the attention bench cases: a table, or with `--json` a JSON array of records
/// {"case", "impl", "median_ms", "gflops", "peak_extra_bytes"}.
pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
    if !alloc::installed() {
        eprintln!("note: counting allocator not installed, peak_extra_bytes will read 0");
    }
    let records = collect(args, args.json)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&records)?);
    } else {
        eprintln!(
            "threads: {} (RAYON_NUM_THREADS)",
            rayon::current_num_threads()
        );
    }
    Ok(())
}
