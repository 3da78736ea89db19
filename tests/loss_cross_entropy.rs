//! The fused cross-entropy (`tinylm::loss::cross_entropy`) against finite differences,
//! an f64 ground truth, the composed candle reference, and numbers from PyTorch.

mod loss_util;

use candle_core::{DType, Device, Tensor, Var};
use loss_util::*;
use tinylm::cpu::simd::{self, Level};
use tinylm::loss::{self, reference, CrossEntropyOptions, Reduction};

/// `simd::set_cap` is process-wide: a test that compares SIMD levels holds this
/// for its whole run, so that no other test caps the level under its uncapped runs.
static SIMD_CAP: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn simd_turn() -> std::sync::MutexGuard<'static, ()> {
    SIMD_CAP.lock().unwrap_or_else(|e| e.into_inner())
}

/// `f` run with the kernel capped at SIMD level 0 (baseline) and 1 (AVX2), the cap
/// lifted afterwards: (level, result) pairs. The caller holds [`simd_turn`].
fn at_capped_simd_levels<R>(
    _turn: &std::sync::MutexGuard<'static, ()>,
    f: impl Fn() -> R,
) -> Vec<(u8, R)> {
    let out = [Level::Baseline, Level::Avx2]
        .into_iter()
        .map(|cap| {
            simd::set_cap(Some(cap));
            (cap as u8, f())
        })
        .collect();
    simd::set_cap(None);
    out
}

/// The widest vector level the kernel uses on this CPU, for the test reports.
fn detected_simd() -> &'static str {
    match simd::detected() {
        Level::Avx512 => "2 (AVX-512, this CPU)",
        Level::Avx2 => "1 (AVX2, this CPU's widest)",
        Level::Baseline => "0 (this CPU's widest)",
    }
}

/// A rayon pool of `k` threads (the kernel's results must not depend on k).
fn pool(k: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(k)
        .build()
        .unwrap()
}

fn dev() -> Device {
    Device::Cpu
}

fn tensor_f32(x: &[f64], n: usize, v: usize) -> Tensor {
    let x: Vec<f32> = x.iter().map(|&a| a as f32).collect();
    Tensor::from_vec(x, (n, v), &dev()).unwrap()
}

fn tgt(t: &[u32]) -> Tensor {
    Tensor::from_vec(t.to_vec(), t.len(), &dev()).unwrap()
}

/// Loss reduced to a scalar (the sum for `None`) and its gradient, through candle's
/// autograd, for either implementation.
fn loss_and_grad(
    f: impl Fn(&Tensor, &Tensor, &CrossEntropyOptions) -> candle_core::Result<Tensor>,
    x: &Tensor,
    t: &Tensor,
    o: &CrossEntropyOptions,
) -> (Vec<f64>, Vec<f64>) {
    let var = Var::from_tensor(x).unwrap();
    let loss = f(var.as_tensor(), t, o).unwrap();
    let scalar = if o.reduction == Reduction::None {
        loss.sum_all().unwrap()
    } else {
        loss.clone()
    };
    let grads = scalar.backward().unwrap();
    let g = grads
        .get(var.as_tensor())
        .expect("a gradient for the logits");
    (to_f64(&loss), to_f64(g))
}

#[test]
fn finite_difference_gradients_f64_on_odd_shapes() {
    // The kernel runs in f64 for f64 logits, so central differences (h = 1e-5,
    // truncation ~h²·f''' ≈ 1e-10, rounding ~1e-16/h ≈ 1e-11) check its analytic
    // gradient to ~1e-9.
    let shapes = [(1, 1), (1, 17), (3, 1), (5, 33), (4, 16), (2, 3)];
    let mut worst = 0.0f64;
    for (si, &(n, v)) in shapes.iter().enumerate() {
        let x: Vec<f64> = uniform(10 + si as u64, n * v)
            .iter()
            .map(|u| 3.0 * u)
            .collect();
        let t = targets(20 + si as u64, n, v);
        for (name, o) in option_sweep() {
            let xt = Tensor::from_vec(x.clone(), (n, v), &dev()).unwrap();
            let (_, g) = loss_and_grad(loss::cross_entropy, &xt, &tgt(&t), &o);
            let f = |x: &[f64]| -> f64 {
                let xt = Tensor::from_vec(x.to_vec(), (n, v), &dev()).unwrap();
                let l = loss::cross_entropy(&xt, &tgt(&t), &o).unwrap();
                l.sum_all().unwrap().to_scalar::<f64>().unwrap()
            };
            let h = 1e-5;
            let mut err = 0.0f64;
            for k in 0..n * v {
                let mut xp = x.clone();
                xp[k] += h;
                let mut xm = x.clone();
                xm[k] -= h;
                let fd = (f(&xp) - f(&xm)) / (2.0 * h);
                err = err.max((fd - g[k]).abs());
            }
            println!("fd N={n} V={v} {name:>14}: max |fd - grad| = {err:.2e}");
            assert!(
                err < 1e-8,
                "finite differences disagree: N={n} V={v} {name}: {err:e}"
            );
            worst = worst.max(err);
        }
    }
    println!("finite differences: worst {worst:.2e} -> PASS");
}

#[test]
fn agrees_with_f64_truth_at_least_as_well_as_reference() {
    // N and V not multiples of the vector width (16); logits ~U(-4, 4).
    let (n, v) = (37, 1003);
    let x64: Vec<f64> = uniform(1, n * v).iter().map(|u| 4.0 * u).collect();
    // Truth is computed from the f32-rounded inputs both implementations see.
    let x32: Vec<f64> = x64.iter().map(|&a| a as f32 as f64).collect();
    let mut t = targets(2, n, v);
    t[3] = 2; // ignored under ignore_index = 2
    t[11] = 2;
    let xt = tensor_f32(&x32, n, v);
    for (name, o) in option_sweep() {
        let (rows, red, g_true) = ce_f64(&x32, &t, v, &o);
        let l_true = if o.reduction == Reduction::None {
            rows.clone()
        } else {
            vec![red]
        };
        let (l_f, g_f) = loss_and_grad(loss::cross_entropy, &xt, &tgt(&t), &o);
        let (l_r, g_r) = loss_and_grad(reference::cross_entropy, &xt, &tgt(&t), &o);
        let (el_f, el_r) = (max_abs_diff(&l_f, &l_true), max_abs_diff(&l_r, &l_true));
        let (eg_f, eg_r) = (max_abs_diff(&g_f, &g_true), max_abs_diff(&g_r, &g_true));
        let lmax = l_true.iter().fold(1.0f64, |a, b| a.max(b.abs()));
        let gmax = g_true.iter().fold(0.0f64, |a, b| a.max(b.abs()));
        // "No worse than about twice the reference's own f32 error", with a floor of
        // a few f32 ulps of the largest value for when the reference is exact by luck.
        let ok_l = el_f <= 2.0 * el_r + 4.0 * f32::EPSILON as f64 * lmax;
        let ok_g = eg_f <= 2.0 * eg_r + 4.0 * f32::EPSILON as f64 * gmax;
        println!(
            "{name:>14}: loss err fused {el_f:.2e} ref {el_r:.2e} | grad err fused {eg_f:.2e} ref {eg_r:.2e} (max |g| {gmax:.1e}) -> {}",
            if ok_l && ok_g { "PASS" } else { "FAIL" }
        );
        assert!(
            ok_l && ok_g,
            "{name}: fused error exceeds 2x the reference's"
        );
    }
}

#[test]
fn half_precision_logits_accumulate_in_f32() {
    let (n, v) = (9, 257);
    let x64: Vec<f64> = uniform(3, n * v).iter().map(|u| 5.0 * u).collect();
    let t = targets(4, n, v);
    let o = CrossEntropyOptions {
        label_smoothing: 0.1,
        z_loss: 1e-3,
        ..Default::default()
    };
    for dt in [DType::BF16, DType::F16] {
        let xt = tensor_f32(&x64, n, v).to_dtype(dt).unwrap();
        let xr = to_f64(&xt); // the values the kernel sees
        let (_, red, g_true) = ce_f64(&xr, &t, v, &o);
        let (l_f, g_f) = loss_and_grad(loss::cross_entropy, &xt, &tgt(&t), &o);
        let (l_r, g_r) = loss_and_grad(reference::cross_entropy, &xt, &tgt(&t), &o);
        let gmax = g_true.iter().fold(0.0f64, |a, b| a.max(b.abs()));
        let (el_f, el_r) = ((l_f[0] - red).abs(), (l_r[0] - red).abs());
        let (eg_f, eg_r) = (max_abs_diff(&g_f, &g_true), max_abs_diff(&g_r, &g_true));
        // The loss is computed in f32 from exact half inputs: f32-level error. The
        // gradient is rounded once to the half type: within one half ulp of the max.
        let half_ulp = if dt == DType::BF16 {
            2f64.powi(-8)
        } else {
            2f64.powi(-11)
        };
        println!("{dt:?}: loss err fused {el_f:.2e} ref {el_r:.2e}; grad err fused {eg_f:.2e} ref {eg_r:.2e} (max |g| {gmax:.1e})");
        assert!(
            el_f < 1e-5 * red.abs().max(1.0),
            "{dt:?} loss off by {el_f}"
        );
        assert!(eg_f <= half_ulp * gmax, "{dt:?} gradient off by {eg_f}");
        assert!(
            eg_f <= 2.0 * eg_r + half_ulp * gmax * 0.01,
            "{dt:?}: fused gradient error above 2x reference"
        );
        assert_eq!(xt.dtype(), dt);
    }
    println!("half precision -> PASS");
}

/// bf16 and f16 gradients, streamed like the f32 ones. f16: every element is the f32
/// kernel's gradient for the same (exactly representable) logits rounded to nearest
/// even by `half` (the row arithmetic is the same f32 code), bit for bit, and so is
/// the loss. bf16 rows take a cheaper exponential (base 2, ~1e-6 relative) and one
/// FMA for a·e - b: every element is within one bf16 ulp of the rounded f32 gradient
/// (nearly all equal), and the loss within 2e-6 relative of the f32 one. Both: ignored
/// rows (first, last, adjacent) are exactly +0; no NaN; the same bits for a fresh
/// gradient and a caller's buffer at each of the 32 16-bit offsets within a cache
/// line, at 1/2/3 threads and at every SIMD level up to the CPU's. Odd shapes: V =
/// 1001 (rows start anywhere within a line) and V = 8200 (8 blocks and a tail).
#[test]
fn half_gradients_match_rounded_f32_gradients_whatever_the_buffer_threads_or_simd() {
    let turn = simd_turn();
    check_half_gradients::<half::bf16>(&turn, DType::BF16, half::bf16::from_f32, |h| h.to_bits());
    check_half_gradients::<half::f16>(&turn, DType::F16, half::f16::from_f32, |h| h.to_bits());
    println!(
        "bf16/f16 gradients: f16 the RNE of the f32 kernel's, bf16 within one ulp of it, 32 offsets, 1/2/3 threads, SIMD levels 0/1 and {} -> PASS",
        detected_simd()
    );
}

/// The f32 kernel's loss and gradient on `x32`, each gradient element rounded to 16-bit
/// bits by `to_bits`.
fn f32_loss_and_rounded_grad(
    x32: &Tensor,
    t: &Tensor,
    o: &CrossEntropyOptions,
    to_bits: impl Fn(f32) -> u16,
) -> (f32, Vec<u16>) {
    let (l, g) = loss::cross_entropy_loss_and_grad(x32, t, o).unwrap();
    let g = g.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    (
        l.to_scalar::<f32>().unwrap(),
        g.into_iter().map(to_bits).collect(),
    )
}

fn check_half_gradients<H: loss::GradElem + candle_core::WithDType>(
    turn: &std::sync::MutexGuard<'static, ()>,
    dt: DType,
    round: fn(f32) -> H,
    bits: fn(H) -> u16,
) {
    for (n, v) in [(13, 1001), (11, 8200)] {
        let x: Vec<f64> = uniform(31, n * v).iter().map(|u| 9.0 * u).collect();
        let mut t: Vec<u32> = (0..n).map(|i| ((i * 7919) % v) as u32).collect();
        t[1] = (v - 1) as u32;
        let ignored = [0, 5, 6, n - 1];
        for &i in &ignored {
            t[i] = 3;
        }
        let o = CrossEntropyOptions {
            ignore_index: Some(3),
            label_smoothing: 0.1,
            z_loss: 1e-3,
            ..Default::default()
        };
        let xh = tensor_f32(&x, n, v).to_dtype(dt).unwrap();
        let x32 = xh.to_dtype(DType::F32).unwrap(); // the same values, exactly
        let tt = tgt(&t);
        let (l32, want) = f32_loss_and_rounded_grad(&x32, &tt, &o, |g| bits(round(g)));
        let fresh = || -> (u32, Vec<u16>) {
            let (l, g) = loss::cross_entropy_loss_and_grad(&xh, &tt, &o).unwrap();
            assert_eq!(g.dtype(), dt);
            let l = l.to_scalar::<f32>().unwrap().to_bits();
            let g = g.flatten_all().unwrap().to_vec1::<H>().unwrap();
            (l, g.into_iter().map(bits).collect())
        };
        let first = pool(2).install(fresh);
        if dt == DType::BF16 {
            let l = f32::from_bits(first.0);
            assert!(
                (l - l32).abs() <= 2e-6 * l32.abs(),
                "bf16 loss {l} against f32 {l32}"
            );
            // Ordered integers: adjacent bf16 values differ by 1 (±0 are both 0).
            let ord = |b: u16| (b & 0x7FFF) as i32 * if b & 0x8000 != 0 { -1 } else { 1 };
            let bad = (0..n * v).find(|&k| (ord(first.1[k]) - ord(want[k])).abs() > 1);
            assert!(
                bad.is_none(),
                "bf16 {n}x{v}: element {bad:?} is more than one ulp from the f32 gradient"
            );
            let differ = (0..n * v).filter(|&k| first.1[k] != want[k]).count();
            println!(
                "bf16 {n}x{v}: {differ} of {} elements one ulp off the rounded f32 gradient",
                n * v
            );
            assert!(
                differ * 50 < n * v,
                "bf16 {n}x{v}: {differ} elements differ"
            );
        } else {
            assert_eq!(first.0, l32.to_bits(), "{dt:?} loss");
            let bad = (0..n * v).find(|&k| first.1[k] != want[k]);
            assert!(
                bad.is_none(),
                "{dt:?} {n}x{v}: element {bad:?} is not the rounded f32 gradient"
            );
        }
        for &i in &ignored {
            assert!(
                first.1[i * v..(i + 1) * v].iter().all(|&b| b == 0),
                "{dt:?} ignored row {i} is not +0"
            );
        }
        let g64: Vec<f64> = to_f64(&loss::cross_entropy_loss_and_grad(&xh, &tt, &o).unwrap().1);
        assert!(g64.iter().all(|g| g.is_finite()), "{dt:?}: a NaN or inf");
        // A caller's buffer at every 16-bit offset within a cache line.
        let mut store = vec![round(f32::NAN); n * v + 32];
        let base = store.as_ptr().align_offset(64);
        for off in 0..32 {
            let at = (base + off) % 32;
            let buf = &mut store[at..at + n * v];
            buf.fill(round(f32::NAN));
            pool(2)
                .install(|| loss::cross_entropy_loss_and_grad_into(&xh, &tt, &o, buf))
                .unwrap();
            let got: Vec<u16> = buf.iter().map(|&h| bits(h)).collect();
            assert!(
                got == first.1,
                "{dt:?} {n}x{v}: buffer at offset {at} differs"
            );
        }
        for k in [1, 3] {
            assert!(
                pool(k).install(fresh) == first,
                "{dt:?} {n}x{v}: {k} threads"
            );
        }
        for (cap, r) in at_capped_simd_levels(turn, || pool(2).install(fresh)) {
            assert!(r == first, "{dt:?} {n}x{v}: SIMD level {cap} differs");
        }
    }
    // A buffer of another dtype is a clear error, not a reinterpretation.
    let x = tensor_f32(&[0.5, 1.0], 1, 2).to_dtype(dt).unwrap();
    let mut wrong = vec![0f32; 2];
    let e = loss::cross_entropy_loss_and_grad_into(&x, &tgt(&[1]), &Default::default(), &mut wrong)
        .unwrap_err()
        .to_string();
    assert!(e.contains("gradient buffer of their dtype"), "{e}");
}

/// bf16 rows of large magnitude (maxima near 1e3, 1e7, 3e9 and -1e9, where an
/// exponential that folded m·log2e into one FMA shifted every e^(x - m), and the loss
/// with it, or overflowed): the loss finite, ≥ 0 and within 2e-6 of the f32 kernel's
/// on the same values, every gradient element within one bf16 ulp of the f32 one
/// rounded, and the same bits at every SIMD level.
#[test]
fn bf16_rows_of_large_logits_agree_with_f32() {
    let turn = simd_turn();
    let (n, v) = (6, 1037);
    let ord = |b: u16| (b & 0x7FFF) as i32 * if b & 0x8000 != 0 { -1 } else { 1 };
    for c in [1e3f64, 1e7, 3e9, -1e9] {
        let x: Vec<f64> = uniform(7, n * v)
            .iter()
            .map(|u| c + c.abs() * 9e-3 * u)
            .collect();
        let t = targets(5, n, v);
        let o = CrossEntropyOptions::default();
        let xh = tensor_f32(&x, n, v).to_dtype(DType::BF16).unwrap();
        let x32 = xh.to_dtype(DType::F32).unwrap(); // the same values, exactly
        let tt = tgt(&t);
        let (l32, want) =
            f32_loss_and_rounded_grad(&x32, &tt, &o, |g| half::bf16::from_f32(g).to_bits());
        let run = || {
            let (l, g) = loss::cross_entropy_loss_and_grad(&xh, &tt, &o).unwrap();
            let g = g.flatten_all().unwrap().to_vec1::<half::bf16>().unwrap();
            let l = l.to_scalar::<f32>().unwrap();
            (
                l.to_bits(),
                g.into_iter().map(|h| h.to_bits()).collect::<Vec<u16>>(),
            )
        };
        let first = pool(2).install(run);
        let l = f32::from_bits(first.0);
        assert!(l.is_finite() && l >= 0.0, "max near {c}: loss {l}");
        assert!(
            (l - l32).abs() <= 2e-6 * l32.abs().max(1.0),
            "max near {c}: loss {l} against f32 {l32}"
        );
        let bad = (0..n * v).find(|&k| (ord(first.1[k]) - ord(want[k])).abs() > 1);
        assert!(bad.is_none(), "max near {c}: gradient element {bad:?}");
        for (cap, r) in at_capped_simd_levels(&turn, || pool(2).install(run)) {
            assert!(r == first, "max near {c}: SIMD level {cap} differs");
        }
        println!("bf16 logits near {c:e}: loss {l} (f32 kernel {l32})");
    }
}

/// f16 logits without a gradient (evaluation: the row widened once, then the
/// loss-alone pass) give the f32 kernel's losses for the same values, per row and
/// reduced, at every SIMD level; rows with a NaN, a +inf or only -inf are the same
/// error as in f32, with and without a gradient.
#[test]
fn f16_loss_alone_and_bad_f16_rows_match_f32_at_every_simd_level() {
    let turn = simd_turn();
    for (n, v) in [(13, 1001), (11, 8200)] {
        let x: Vec<f64> = uniform(41, n * v).iter().map(|u| 9.0 * u).collect();
        let mut t: Vec<u32> = (0..n).map(|i| ((i * 7919) % v) as u32).collect();
        t[4] = 3;
        for reduction in [Reduction::None, Reduction::Mean] {
            let o = CrossEntropyOptions {
                reduction,
                ignore_index: Some(3),
                label_smoothing: 0.1,
                z_loss: 1e-3,
                ..Default::default()
            };
            let xh = tensor_f32(&x, n, v).to_dtype(DType::F16).unwrap();
            let x32 = xh.to_dtype(DType::F32).unwrap(); // the same values, exactly
            let bits = |x: &Tensor| -> Vec<u32> {
                let l = loss::cross_entropy(x, &tgt(&t), &o).unwrap(); // no gradient
                let l: Vec<f32> = l.flatten_all().unwrap().to_vec1().unwrap();
                l.into_iter().map(f32::to_bits).collect()
            };
            let want = pool(2).install(|| bits(&x32));
            assert_eq!(pool(2).install(|| bits(&xh)), want, "{n}x{v} {reduction:?}");
            for (cap, got) in at_capped_simd_levels(&turn, || pool(2).install(|| bits(&xh))) {
                assert_eq!(got, want, "{n}x{v} {reduction:?}: SIMD level {cap}");
            }
        }
    }
    let v = 77;
    let outcome = |x: &Tensor, grad: bool| -> String {
        let t = tgt(&[1, 2, 3]);
        let o = CrossEntropyOptions::default();
        let r = if grad {
            loss::cross_entropy_loss_and_grad(x, &t, &o).map(|(l, _)| l)
        } else {
            loss::cross_entropy(x, &t, &o)
        };
        match r {
            Ok(_) => "ok".into(),
            Err(e) => e.to_string(),
        }
    };
    let base: Vec<f64> = uniform(42, 3 * v).iter().map(|u| 3.0 * u).collect();
    for bad in ["nan", "inf", "all -inf"] {
        let mut x = base.clone();
        match bad {
            "nan" => x[v + 40] = f64::NAN,
            "inf" => x[v + 70] = f64::INFINITY,
            _ => x[v..2 * v].fill(f64::NEG_INFINITY),
        }
        let x32 = tensor_f32(&x, 3, v);
        let xh = x32.to_dtype(DType::F16).unwrap();
        for grad in [false, true] {
            let want = outcome(&x32, grad);
            assert_ne!(want, "ok", "{bad}: f32 must report it");
            let mut got = vec![(simd::detected() as u8, outcome(&xh, grad))];
            got.extend(at_capped_simd_levels(&turn, || outcome(&xh, grad)));
            for (level, g) in got {
                assert_eq!(g, want, "{bad}, gradient {grad}, SIMD level {level}");
            }
        }
    }
    println!(
        "f16 loss alone = f32 loss bitwise, bad f16 rows = f32's errors, SIMD levels 0/1 and {} -> PASS",
        detected_simd()
    );
}

/// Inputs of the PyTorch snippet below: x_ij = f32(2.5·sin(1 + 0.37 i + 1.91 j)),
/// N = 6, V = 11, targets (7i + 3) mod 11 with row 4 set to 3.
fn torch_inputs() -> (Tensor, Vec<u32>) {
    let (n, v) = (6, 11);
    let x: Vec<f64> = (0..n)
        .flat_map(|i| (0..v).map(move |j| 2.5 * (1.0 + 0.37 * i as f64 + 1.91 * j as f64).sin()))
        .collect();
    let mut t: Vec<u32> = (0..n).map(|i| ((7 * i + 3) % v) as u32).collect();
    t[4] = 3;
    (tensor_f32(&x, n, v), t)
}

#[test]
fn matches_pytorch_values() {
    // Produced by /work/torch_ref/ce_values.py (PyTorch 2.15, f64 so that the numbers are
    // exact for these f32 inputs):
    //
    //   import math, torch; import torch.nn.functional as F
    //   N, V = 6, 11
    //   x = torch.tensor([[2.5 * math.sin(1.0 + 0.37 * i + 1.91 * j) for j in range(V)]
    //                     for i in range(N)], dtype=torch.float64).float()
    //   t = torch.tensor([(7 * i + 3) % V for i in range(N)]); t[4] = 3
    //   F.cross_entropy(x.double(), t, **kw)      # for each kw below
    //   xx = x.double().requires_grad_(True)
    //   F.cross_entropy(xx, t, reduction="mean", ignore_index=3, label_smoothing=0.1).backward()
    //   xx.grad[1], xx.grad[4]
    let (x, t) = torch_inputs();
    let none = |ig: Option<u32>, ls: f32, r: Reduction| CrossEntropyOptions {
        reduction: r,
        ignore_index: ig,
        label_smoothing: ls,
        ..Default::default()
    };
    let cases: Vec<(&str, CrossEntropyOptions, Vec<f64>)> = vec![
        ("mean", none(None, 0.0, Reduction::Mean), vec![2.681132651]),
        ("sum", none(None, 0.0, Reduction::Sum), vec![16.0867959]),
        (
            "none",
            none(None, 0.0, Reduction::None),
            vec![
                2.664850238,
                1.285836951,
                2.285768871,
                4.572014335,
                1.295299955,
                3.983025553,
            ],
        ),
        (
            "ignore_mean",
            none(Some(3), 0.0, Reduction::Mean),
            vec![3.031661427],
        ),
        (
            "ignore_sum",
            none(Some(3), 0.0, Reduction::Sum),
            vec![12.12664571],
        ),
        (
            "ignore_none",
            none(Some(3), 0.0, Reduction::None),
            vec![0.0, 1.285836951, 2.285768871, 4.572014335, 0.0, 3.983025553],
        ),
        (
            "smooth_mean",
            none(None, 0.1, Reduction::Mean),
            vec![2.765480172],
        ),
        (
            "smooth_ignore_mean",
            none(Some(3), 0.1, Reduction::Mean),
            vec![3.081273409],
        ),
        (
            "smooth_ignore_none",
            none(Some(3), 0.1, Reduction::None),
            vec![0.0, 1.511041183, 2.410286197, 4.466208621, 0.0, 3.937557635],
        ),
    ];
    for (name, o, want) in cases {
        let got = to_f64(&loss::cross_entropy(&x, &tgt(&t), &o).unwrap());
        let err = max_abs_diff(&got, &want);
        println!("torch {name:>18}: max diff {err:.2e}");
        // f32 arithmetic on values of a few units; torch printed 10 digits.
        assert!(err < 2e-6, "{name}: {got:?} vs torch {want:?}");
    }
    let o = none(Some(3), 0.1, Reduction::Mean);
    let (_, g) = loss_and_grad(loss::cross_entropy, &x, &tgt(&t), &o);
    let want_row1 = [
        0.06364944154,
        0.001757367526,
        -0.001654892583,
        0.03293012808,
        0.01331012921,
        -0.001802321475,
        0.008642624611,
        0.04234076047,
        -0.001519350371,
        0.000514055858,
        -0.1581679429,
    ];
    let e1 = max_abs_diff(&g[11..22], &want_row1);
    println!(
        "torch grad row 1: max diff {e1:.2e}; ignored row 4 max |g| {:.1e}",
        g[44..55].iter().fold(0.0f64, |a, b| a.max(b.abs()))
    );
    assert!(e1 < 1e-7);
    assert!(g[44..55].iter().all(|&a| a == 0.0));
    println!("pytorch values -> PASS");
}

#[test]
fn every_target_ignored_gives_zero_not_nan() {
    let (n, v) = (4, 19);
    let x: Vec<f64> = uniform(5, n * v).iter().map(|u| 2.0 * u).collect();
    let t = vec![7u32; n];
    for r in [Reduction::Mean, Reduction::Sum, Reduction::None] {
        for norm in [None, Some(10.0)] {
            let o = CrossEntropyOptions {
                reduction: r,
                ignore_index: Some(7),
                normalizer: norm,
                label_smoothing: 0.1,
                z_loss: 1e-3,
                ..Default::default()
            };
            let (l, g) = loss_and_grad(loss::cross_entropy, &tensor_f32(&x, n, v), &tgt(&t), &o);
            println!(
                "all ignored {r:?} normalizer {norm:?}: loss {l:?}, max |g| {}",
                g.iter().fold(0.0f64, |a, b| a.max(b.abs()))
            );
            assert!(l.iter().all(|&a| a == 0.0), "loss must be exactly 0");
            assert!(g.iter().all(|&a| a == 0.0), "gradient must be exactly 0");
        }
    }
    println!("all ignored -> PASS");
}

#[test]
fn extreme_logits_stay_finite_and_nan_is_an_error() {
    let v = 21;
    let mut x = vec![0.0f64; 3 * v];
    for j in 0..v {
        x[j] = if j % 2 == 0 { 1e4 } else { -1e4 };
        x[v + j] = if j % 3 == 0 {
            f64::NEG_INFINITY
        } else {
            j as f64
        };
        x[2 * v + j] = -1e4;
    }
    x[2 * v + 5] = 1e4;
    let t = vec![1u32, 4, 0]; // a -1e4 target next to +1e4 logits: loss 2e4
    for (name, o) in option_sweep() {
        if o.label_smoothing > 0.0 {
            continue; // ε·mean(log p) is -inf with a -inf logit, in PyTorch as in the maths
        }
        let (l, g) = loss_and_grad(loss::cross_entropy, &tensor_f32(&x, 3, v), &tgt(&t), &o);
        let (rows, red, g_true) = ce_f64(&x, &t, v, &o);
        let l_true = if o.reduction == Reduction::None {
            rows
        } else {
            vec![red]
        };
        assert!(
            l.iter().all(|a| a.is_finite()) && g.iter().all(|a| a.is_finite()),
            "{name}: non-finite"
        );
        let el = l
            .iter()
            .zip(&l_true)
            .map(|(a, b)| (a - b).abs() / b.abs().max(1.0))
            .fold(0.0, f64::max);
        let eg = max_abs_diff(&g, &g_true);
        println!(
            "extreme {name:>14}: loss {:?} rel err {el:.1e}, grad err {eg:.1e}",
            &l[..1]
        );
        assert!(el < 1e-6 && eg < 1e-6, "{name}: extreme logits off");
    }
    for bad in [f64::NAN, f64::INFINITY] {
        let mut xb = x.clone();
        xb[v + 7] = bad;
        let err = loss::cross_entropy(
            &tensor_f32(&xb, 3, v),
            &tgt(&t),
            &CrossEntropyOptions::default(),
        );
        println!(
            "logit {bad}: {:?}",
            err.as_ref().map(|_| ()).map_err(|e| e.to_string())
        );
        assert!(err.is_err(), "a {bad} logit must be reported");
    }
    let err = loss::cross_entropy(
        &tensor_f32(&x, 3, v),
        &tgt(&[1, 4, 21]),
        &CrossEntropyOptions::default(),
    );
    assert!(err.is_err(), "target 21 with V = 21 must be reported");
    println!("extreme logits -> PASS");
}

#[test]
fn bitwise_identical_across_runs_threads_and_simd_levels() {
    let turn = simd_turn();
    let (n, v) = (64, 3001);
    let x: Vec<f64> = uniform(6, n * v).iter().map(|u| 6.0 * u).collect();
    let t = targets(7, n, v);
    let xt = tensor_f32(&x, n, v);
    let o = option_sweep()
        .into_iter()
        .find(|(k, _)| *k == "all_mean_norm")
        .unwrap()
        .1;
    let run = || -> (Vec<u32>, Vec<u32>) {
        let (l, g) = loss_and_grad(loss::cross_entropy, &xt, &tgt(&t), &o);
        let bits = |a: &[f64]| a.iter().map(|&x| (x as f32).to_bits()).collect::<Vec<_>>();
        (bits(&l), bits(&g))
    };
    let first = pool(2).install(run);
    // The loss alone (no gradient: its exponentials computed 64 at a time, then summed)
    // and the loss with its gradient (16 at a time) give the same bits, in f32 and f64.
    // (A last-bit change in a row's sum moves ln(sum) by far less than the loss's last
    // bit, so this checks what a user sees, not the summation order itself.)
    let alone = || {
        let l = loss::cross_entropy(&xt, &tgt(&t), &o).unwrap(); // xt tracks no gradient
        vec![l.to_scalar::<f32>().unwrap().to_bits()]
    };
    assert_eq!(pool(2).install(alone), first.0, "the loss alone differs");
    for (cap, r) in at_capped_simd_levels(&turn, || pool(2).install(alone)) {
        assert_eq!(r, first.0, "the loss alone differs at SIMD level {cap}");
    }
    let x64 = Tensor::from_vec(x.clone(), (n, v), &dev()).unwrap();
    let l64 = |l: Tensor| l.to_scalar::<f64>().unwrap().to_bits();
    assert_eq!(
        l64(loss::cross_entropy(&x64, &tgt(&t), &o).unwrap()),
        l64(loss::cross_entropy_loss_and_grad(&x64, &tgt(&t), &o)
            .unwrap()
            .0),
        "f64: the loss alone differs from the loss with its gradient"
    );
    for rep in 0..4 {
        assert!(
            pool(2).install(run) == first,
            "run {rep} at 2 threads differs"
        );
    }
    for k in [1, 3] {
        assert!(pool(k).install(run) == first, "{k} threads differ from 2");
    }
    for (cap, r) in at_capped_simd_levels(&turn, || pool(2).install(run)) {
        assert!(r == first, "SIMD level {cap} differs");
    }
    println!(
        "bitwise identical over 5 runs at 2 threads, at 1 and 3 threads, and at SIMD levels 0/1 and {} -> PASS",
        detected_simd()
    );
}

#[test]
fn gradient_accumulation_equals_big_batch() {
    // Three micro-batches of unequal sizes and unequal counts of ignored rows; each
    // uses the normaliser = counted rows over all of them.
    let (n, v) = (30, 77);
    let x: Vec<f64> = uniform(8, n * v).iter().map(|u| 3.0 * u).collect();
    let mut t = targets(9, n, v);
    for i in [0, 1, 2, 3, 12, 29] {
        t[i] = 5; // ignored: 4 in the first micro-batch, 1 in the second, 1 in the third
    }
    let ig = Some(5);
    let total = t.iter().filter(|&&a| Some(a) != ig).count() as f32;
    let big_o = CrossEntropyOptions {
        ignore_index: ig,
        label_smoothing: 0.1,
        z_loss: 1e-3,
        ..Default::default()
    };
    let (l_big, g_big) =
        loss_and_grad(loss::cross_entropy, &tensor_f32(&x, n, v), &tgt(&t), &big_o);
    let micro_o = CrossEntropyOptions {
        normalizer: Some(total),
        ..big_o.clone()
    };
    let (mut l_acc, mut g_acc) = (0.0, Vec::new());
    for (a, b) in [(0, 10), (10, 22), (22, 30)] {
        let xs = tensor_f32(&x[a * v..b * v], b - a, v);
        let (l, g) = loss_and_grad(loss::cross_entropy, &xs, &tgt(&t[a..b]), &micro_o);
        l_acc += l[0];
        g_acc.extend(g);
    }
    let eg = max_abs_diff(&g_acc, &g_big);
    println!(
        "accumulated vs big batch: loss {l_acc} vs {}, grad max diff {eg:e}",
        l_big[0]
    );
    // Every row sees the same scale, so the gradients are the same bits; the loss is a
    // sum in a different order.
    assert_eq!(eg, 0.0);
    assert!((l_acc - l_big[0]).abs() < 1e-6 * l_big[0].abs());
    println!("gradient accumulation -> PASS");
}

#[test]
fn upstream_gradient_scales_and_per_row_weights() {
    let (n, v) = (7, 45);
    let x: Vec<f64> = uniform(11, n * v).iter().map(|u| 2.0 * u).collect();
    let t = targets(12, n, v);
    let xt = tensor_f32(&x, n, v);
    let w: Vec<f32> = (0..n).map(|i| 0.5 + i as f32).collect();
    let wt = Tensor::from_vec(w.clone(), n, &dev()).unwrap();
    let o = CrossEntropyOptions {
        reduction: Reduction::None,
        ignore_index: Some(3),
        label_smoothing: 0.1,
        ..Default::default()
    };
    let weighted =
        |f: &dyn Fn(&Tensor, &Tensor, &CrossEntropyOptions) -> candle_core::Result<Tensor>| {
            let var = Var::from_tensor(&xt).unwrap();
            let l = f(var.as_tensor(), &tgt(&t), &o).unwrap();
            let s = (l * &wt).unwrap().sum_all().unwrap();
            to_f64(s.backward().unwrap().get(var.as_tensor()).unwrap())
        };
    let (gf, gr) = (
        weighted(&loss::cross_entropy),
        weighted(&reference::cross_entropy),
    );
    let e = max_abs_diff(&gf, &gr);
    println!("reduction none, rows weighted: fused vs reference grad max diff {e:.1e}");
    assert!(e < 1e-6);
    // A scalar upstream factor (loss · 3 + loss).
    let o = CrossEntropyOptions {
        ignore_index: Some(3),
        ..Default::default()
    };
    let var = Var::from_tensor(&xt).unwrap();
    let l = loss::cross_entropy(var.as_tensor(), &tgt(&t), &o).unwrap();
    let s = ((&l * 3.0).unwrap() + &l).unwrap();
    let g4 = to_f64(s.backward().unwrap().get(var.as_tensor()).unwrap());
    let (_, g1) = loss_and_grad(loss::cross_entropy, &xt, &tgt(&t), &o);
    let e = g4
        .iter()
        .zip(&g1)
        .map(|(a, b)| (a - 4.0 * b).abs())
        .fold(0.0, f64::max);
    println!("upstream factor 4 split over two uses: max diff {e:.1e}");
    assert!(e < 1e-7);
    println!("upstream gradients -> PASS");
}

#[test]
fn stats_and_direct_gradient_match() {
    let (n, v) = (25, 130);
    let x: Vec<f64> = uniform(13, n * v).iter().map(|u| 3.0 * u).collect();
    let mut t = targets(14, n, v);
    // Make some rows correct: put the target on the row's argmax.
    for i in (0..n).step_by(3) {
        let r = &x[i * v..(i + 1) * v];
        t[i] = (0..v).fold(0, |b, j| if r[j] > r[b] { j } else { b }) as u32;
    }
    t[4] = 9;
    let o = CrossEntropyOptions {
        ignore_index: Some(9),
        softcap: Some(5.0),
        ..Default::default()
    };
    let xt = tensor_f32(&x, n, v);
    let (l, st) = loss::cross_entropy_with_stats(&xt, &tgt(&t), &o).unwrap();
    let mut correct = 0;
    let mut lse_err = 0.0f64;
    for i in 0..n {
        if t[i] == 9 {
            assert_eq!(st.lse[i], 0.0);
            continue;
        }
        let y: Vec<f64> = x[i * v..(i + 1) * v]
            .iter()
            .map(|&a| 5.0 * ((a as f32 as f64) / 5.0).tanh())
            .collect();
        let m = y.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let lse = m + y.iter().map(|a| (a - m).exp()).sum::<f64>().ln();
        lse_err = lse_err.max((lse - st.lse[i] as f64).abs());
        let am = (0..v).fold(0, |b, j| if y[j] > y[b] { j } else { b });
        correct += (am == t[i] as usize) as usize;
    }
    println!(
        "stats: correct {} (want {correct}), counted {}, lse max err {lse_err:.1e}",
        st.correct, st.counted
    );
    assert_eq!(st.correct, correct);
    assert!(correct >= 8);
    assert_eq!(st.counted, n - t.iter().filter(|&&a| a == 9).count());
    assert!(lse_err < 1e-5);
    let (l2, g2) = loss::cross_entropy_loss_and_grad(&xt, &tgt(&t), &o).unwrap();
    let (l1, g1) = loss_and_grad(loss::cross_entropy, &xt, &tgt(&t), &o);
    assert_eq!(to_f64(&l2), to_f64(&l));
    assert_eq!(to_f64(&l2), l1);
    assert_eq!(
        to_f64(&g2),
        g1,
        "direct gradient = autograd gradient, bit for bit"
    );
    println!("stats and direct gradient -> PASS");
}

/// The streamed gradient path: each row's gradient is written during the next row's
/// exponentials (pipelined, flushed at every ignored row and at the end of each job),
/// straight from registers into a 64-byte-aligned destination or through a staging row
/// into any other. Rows of 2500 (three blocks, a short last one) and of 8200 (whose
/// jobs hold 8 rows at 1 thread and 7 at 2 or 3, so the job boundaries move with the
/// thread count); targets in every block and in the last columns (the unaligned tail);
/// ignored rows first, last, in pairs and alone; label smoothing and z-loss on. Every
/// way of getting the gradient (fresh buffer, caller's buffer at each of the 16 offsets
/// within a line, 1/2/3 threads, each SIMD level up to the CPU's) gives the same bits,
/// within 2x the composed reference's f32 error of the f64 truth.
#[test]
fn streamed_gradient_rows_agree_whatever_the_alignment_threads_or_simd_level() {
    let turn = simd_turn();
    for (n, v) in [(41, 2500), (40, 8200)] {
        let x: Vec<f64> = uniform(21, n * v).iter().map(|u| 8.0 * u - 4.0).collect();
        let mut t: Vec<u32> = (0..n).map(|i| ((i * 997) % v) as u32).collect();
        t[1] = (v - 1) as u32;
        t[2] = (v - 3) as u32;
        let ignored = [0, 7, 8, 20, n - 1];
        for &i in &ignored {
            t[i] = 11;
        }
        let o = CrossEntropyOptions {
            ignore_index: Some(11),
            label_smoothing: 0.1,
            z_loss: 1e-3,
            ..Default::default()
        };
        let xt = tensor_f32(&x, n, v);
        let tt = tgt(&t);
        let bits = |g: &[f32]| g.iter().map(|a| a.to_bits()).collect::<Vec<_>>();
        let fresh = || -> Vec<u32> {
            let (_, g) = loss::cross_entropy_loss_and_grad(&xt, &tt, &o).unwrap();
            bits(&g.flatten_all().unwrap().to_vec1::<f32>().unwrap())
        };
        let first = pool(2).install(fresh);
        // A caller's buffer at every f32 offset within a cache line.
        let mut store = vec![f32::NAN; n * v + 16];
        let base = store.as_ptr().align_offset(64);
        for off in 0..16 {
            let at = (base + off) % 16;
            let buf = &mut store[at..at + n * v];
            buf.fill(f32::NAN);
            pool(2)
                .install(|| loss::cross_entropy_loss_and_grad_into(&xt, &tt, &o, buf))
                .unwrap();
            assert!(bits(buf) == first, "{n}x{v}: buffer at offset {at} differs");
        }
        for k in [1, 3] {
            assert!(
                pool(k).install(fresh) == first,
                "{n}x{v}: {k} threads differ"
            );
        }
        for (cap, r) in at_capped_simd_levels(&turn, || pool(2).install(fresh)) {
            assert!(r == first, "{n}x{v}: SIMD level {cap} differs");
        }
        // Against the f64 truth, next to the composed reference's own f32 error.
        let (_, _, g64) = ce_f64(&x, &t, v, &o);
        let g: Vec<f64> = first.iter().map(|&b| f32::from_bits(b) as f64).collect();
        let (_, g_ref) = loss_and_grad(reference::cross_entropy, &xt, &tt, &o);
        let (e, e_ref) = (max_abs_diff(&g, &g64), max_abs_diff(&g_ref, &g64));
        println!("{n}x{v}: streamed gradient vs f64 {e:.2e} (reference f32: {e_ref:.2e})");
        assert!(e <= 2.0 * e_ref, "{e:e} > 2 x {e_ref:e}");
        for &i in &ignored {
            assert!(
                g[i * v..(i + 1) * v].iter().all(|&a| a == 0.0),
                "ignored row {i}"
            );
        }
    }
    println!(
        "streamed rows: same bits at 16 offsets, 1/2/3 threads, SIMD levels 0/1 and {} -> PASS",
        detected_simd()
    );
}

/// Short rows (V ≤ 256, the byte vocabulary) run in registers on AVX-512
/// (`loss::kernel::short_rows`, one compiled copy per count of 16-lane chunks); at SIMD
/// levels 0/1, and for rows that are not plain, the general row kernel runs them. Both
/// must give the same bits, at every V from 1 to 257, for every option (and all of them
/// at once without a soft-cap), for: the autograd loss and gradient, rows weighted by
/// their upstream gradient (reduction none), the forward alone, the per-row lse and the
/// argmax count, and a caller's buffer on a line (streamed) and off one. The logits
/// include rows that are all ties, signed zeros as the max, -inf entries and entries
/// more than 87 below the max; 700 rows at V = 256 span several rayon jobs, with ignored
/// rows at their boundaries. Errors against the f64 truth stay within twice the
/// composed reference's.
#[test]
fn short_rows_in_registers_match_the_general_kernel_bitwise() {
    let turn = simd_turn();
    let jobs_before = loss::short_row_jobs();
    let mut sweep = option_sweep();
    for (name, o) in option_sweep() {
        if name.starts_with("all") {
            let uncapped = CrossEntropyOptions { softcap: None, ..o };
            sweep.push((
                if name == "all" {
                    "all_no_cap"
                } else {
                    "all_mean_norm_no_cap"
                },
                uncapped,
            ));
        }
    }
    let bits = |a: &[f64]| a.iter().map(|&x| (x as f32).to_bits()).collect::<Vec<_>>();
    let mut cases: Vec<(usize, usize)> = (1..=257).map(|v| (23, v)).collect();
    cases.push((700, 256));
    for (n, v) in cases {
        let mut x: Vec<f64> = uniform(40 + v as u64 + n as u64, n * v)
            .iter()
            .map(|u| (8.0 * u) as f32 as f64)
            .collect();
        let mut t = targets(50 + v as u64, n, v);
        let row = |i: usize| i * v..(i + 1) * v;
        let r1 = row(1);
        x[r1].fill(0.0); // all ties
        let r2 = row(2);
        for (j, a) in x[r2].iter_mut().enumerate() {
            *a = if j % 2 == 0 { -0.0 } else { -(j as f64) }; // max -0.0 (and +0.0 below)
        }
        x[2 * v + v / 2] = 0.0;
        let r3 = row(3);
        for a in x[r3].iter_mut().step_by(3) {
            *a = f64::NEG_INFINITY;
        }
        x[3 * v + v - 1] = 1.0; // never all -inf
        let r4 = row(4);
        x[r4].fill(-60.0);
        x[4 * v + v / 3] = 60.0; // the others 120 below the max: exp gives 0
        x[8 * v + t[8] as usize] = 9.0;
        x[8 * v] = 9.0; // max tied at the target and at index 0
        x[9 * v + t[9] as usize] = 9.0; // max at the target
        let ignored: Vec<usize> = if n > 600 {
            vec![0, 255, 256, 511, 512, 699]
        } else {
            vec![0, 5, 6, n - 1]
        };
        for &i in &ignored {
            t[i] = 2.min(v as u32 - 1); // ignored under the sweep's ignore_index = 2
        }
        let xt = tensor_f32(&x, n, v);
        let tt = tgt(&t);
        let weights: Vec<f32> = (0..n).map(|i| 0.25 + (i % 7) as f32).collect();
        let wt = Tensor::from_vec(weights, n, &dev()).unwrap();
        for (name, o) in &sweep {
            let run = || {
                let (l, g) = loss_and_grad(loss::cross_entropy, &xt, &tt, o);
                let fwd = to_f64(&loss::cross_entropy(&xt, &tt, o).unwrap());
                let mut got = vec![bits(&l), bits(&g), bits(&fwd)];
                if o.reduction == Reduction::None {
                    let var = Var::from_tensor(&xt).unwrap();
                    let l = loss::cross_entropy(var.as_tensor(), &tt, o).unwrap();
                    let s = (l * &wt).unwrap().sum_all().unwrap();
                    got.push(bits(&to_f64(
                        s.backward().unwrap().get(var.as_tensor()).unwrap(),
                    )));
                }
                if o.softcap.is_none() {
                    let (_, st) = loss::cross_entropy_with_stats(&xt, &tt, o).unwrap();
                    got.push(st.lse.iter().map(|a| a.to_bits()).collect());
                    got.push(vec![st.correct as u32, st.counted as u32]);
                }
                for off in [0, 5] {
                    let mut store = vec![f32::NAN; n * v + 16];
                    let at = (store.as_ptr().align_offset(64) + off) % 16;
                    let buf = &mut store[at..at + n * v];
                    let rows = loss::cross_entropy_loss_and_grad_into(&xt, &tt, o, buf).unwrap();
                    got.push(bits(&rows));
                    got.push(bits(&buf.iter().map(|&a| a as f64).collect::<Vec<_>>()));
                }
                got
            };
            let widest = pool(2).install(run);
            for (cap, r) in at_capped_simd_levels(&turn, || pool(2).install(run)) {
                assert!(r == widest, "{n}x{v} {name}: SIMD level {cap} differs");
            }
        }
    }
    let jobs = loss::short_row_jobs() - jobs_before;
    println!("V = 1..=257 (and 700 x 256): every option, same bits at SIMD levels 0/1 and {}; {jobs} jobs on the registers path", detected_simd());
    if detected_simd().starts_with('2') {
        assert!(jobs > 0, "the registers path never ran on this AVX-512 CPU");
    }

    // Against the f64 truth (random logits only, where the truth is finite everywhere).
    let mut worst = (0.0f64, 0.0f64);
    for v in [7usize, 100, 256] {
        let n = 37;
        let x32: Vec<f64> = uniform(60 + v as u64, n * v)
            .iter()
            .map(|u| (8.0 * u) as f32 as f64)
            .collect();
        let mut t = targets(70 + v as u64, n, v);
        t[3] = 2; // ignored under ignore_index = 2
        let (xt, tt) = (tensor_f32(&x32, n, v), tgt(&t));
        for (name, o) in &sweep {
            if o.softcap.is_some() || o.reduction == Reduction::None {
                continue;
            }
            let (_, _, g_true) = ce_f64(&x32, &t, v, o);
            let (_, g) = loss_and_grad(loss::cross_entropy, &xt, &tt, o);
            let (_, g_ref) = loss_and_grad(reference::cross_entropy, &xt, &tt, o);
            let (e, e_ref) = (max_abs_diff(&g, &g_true), max_abs_diff(&g_ref, &g_true));
            let gmax = g_true.iter().fold(0.0f64, |a, b| a.max(b.abs()));
            assert!(
                e <= 2.0 * e_ref + 4.0 * f32::EPSILON as f64 * gmax,
                "V = {v} {name}: gradient error {e:e} vs reference {e_ref:e}"
            );
            if e / e_ref.max(1e-30) > worst.0 / worst.1.max(1e-30) {
                worst = (e, e_ref);
            }
        }
    }
    println!(
        "short rows: same bits as the general kernel; worst gradient error vs f64 {:.2e} (reference f32: {:.2e}) -> PASS",
        worst.0, worst.1
    );
}

/// No classes (V = 0) is a clear error, not a panic in the kernel's row split; no rows
/// (N = 0) is a zero loss with empty gradients, for both kernels and their backward.
#[test]
fn empty_shapes_give_a_clear_error_or_zero() {
    let o = CrossEntropyOptions::default();
    let zeros = |dims: (usize, usize)| Tensor::zeros(dims, DType::F32, &dev()).unwrap();
    let tz = |n: usize| Tensor::zeros(n, DType::U32, &dev()).unwrap();
    let no_class = |r: candle_core::Result<Tensor>| {
        let e = r.expect_err("V = 0 must be an error").to_string();
        assert!(e.contains("at least one class"), "unclear error: {e}");
    };
    no_class(loss::cross_entropy(&zeros((3, 0)), &tz(3), &o));
    no_class(loss::cross_entropy_loss_and_grad(&zeros((3, 0)), &tz(3), &o).map(|(l, _)| l));
    no_class(loss::linear_cross_entropy(
        &zeros((3, 4)),
        &zeros((0, 4)),
        &tz(3),
        &o,
    ));

    let x = Var::from_tensor(&zeros((0, 5))).unwrap();
    let l = loss::cross_entropy(x.as_tensor(), &tz(0), &o).unwrap();
    assert_eq!(l.to_scalar::<f32>().unwrap(), 0.0);
    let g = l.backward().unwrap();
    assert_eq!(g.get(x.as_tensor()).unwrap().dims(), &[0, 5]);
    let h = Var::from_tensor(&zeros((0, 4))).unwrap();
    let w = Var::from_tensor(&zeros((5, 4))).unwrap();
    let l = loss::linear_cross_entropy(h.as_tensor(), w.as_tensor(), &tz(0), &o).unwrap();
    assert_eq!(l.to_scalar::<f32>().unwrap(), 0.0);
    let g = l.backward().unwrap();
    assert_eq!(g.get(h.as_tensor()).unwrap().dims(), &[0, 4]);
    let dw = to_f64(g.get(w.as_tensor()).unwrap());
    assert!(dw.len() == 20 && dw.iter().all(|&a| a == 0.0));
    println!("V = 0: clear errors; N = 0: loss 0, empty / zero gradients -> PASS");
}

/// f64 logits with a fresh (streamed) gradient over several of the pipeline's blocks
/// (V > 1024), rows at several offsets within a line (V = 1030 and 2500 shift each
/// row): against the f64 truth, and the same bits at 1, 2 and 3 threads.
#[test]
fn f64_streamed_rows_over_several_blocks() {
    for (n, v) in [(12, 1030), (9, 2500), (5, 8200)] {
        let x: Vec<f64> = uniform(77, n * v).iter().map(|u| 8.0 * u - 4.0).collect();
        let mut t: Vec<u32> = (0..n).map(|i| ((i * 997) % v) as u32).collect();
        t[1] = (v - 1) as u32;
        t[2] = 1024;
        let o = CrossEntropyOptions {
            label_smoothing: 0.1,
            z_loss: 1e-3,
            ..Default::default()
        };
        let xt = Tensor::from_vec(x.clone(), (n, v), &dev()).unwrap();
        let tt = tgt(&t);
        let fresh = || -> Vec<u64> {
            let (_, g) = loss::cross_entropy_loss_and_grad(&xt, &tt, &o).unwrap();
            let g = g.flatten_all().unwrap().to_vec1::<f64>().unwrap();
            g.iter().map(|a| a.to_bits()).collect()
        };
        let first = pool(2).install(fresh);
        let (_, _, g64) = ce_f64(&x, &t, v, &o);
        let g: Vec<f64> = first.iter().map(|&b| f64::from_bits(b)).collect();
        let e = max_abs_diff(&g, &g64);
        println!("f64 {n}x{v}: streamed gradient vs the f64 truth {e:.2e}");
        assert!(e < 1e-13, "f64 {n}x{v}: {e:e}");
        for k in [1, 3] {
            assert!(pool(k).install(fresh) == first, "f64 {n}x{v}: {k} threads");
        }
    }
}
