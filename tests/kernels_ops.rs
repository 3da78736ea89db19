//! Fused LayerNorm and GELU (src/kernels) against finite differences in f64, against
//! the composed reference (`kernels::reference`) in f32 with an f64 truth, and for
//! bitwise determinism across runs and thread counts.

use candle_core::{DType, Device, Result, Tensor, Var};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tinylm::kernels::{self, reference};

fn randn(rng: &mut ChaCha8Rng, n: usize, scale: f64, offset: f64) -> Vec<f64> {
    (0..n)
        .map(|_| {
            // Box-Muller: rand 0.8 has no normal distribution without rand_distr.
            let (u1, u2): (f64, f64) = (rng.gen::<f64>().max(1e-300), rng.gen());
            offset + scale * (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
        })
        .collect()
}

fn t(v: &[f64], shape: &[usize], dtype: DType) -> Tensor {
    Tensor::from_slice(v, shape, &Device::Cpu)
        .unwrap()
        .to_dtype(dtype)
        .unwrap()
}

fn flat(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

type Ln = fn(&Tensor, &Tensor, &Tensor, f64) -> Result<Tensor>;

/// y and (dx, dgain, dbias) of loss = Σ y·w.
fn ln_fwd_bwd(
    f: Ln,
    x: &[f64],
    g: &[f64],
    b: &[f64],
    w: &[f64],
    shape: &[usize],
    dtype: DType,
) -> Vec<Vec<f64>> {
    let c = *shape.last().unwrap();
    let xv = Var::from_tensor(&t(x, shape, dtype)).unwrap();
    let gv = Var::from_tensor(&t(g, &[c], dtype)).unwrap();
    let bv = Var::from_tensor(&t(b, &[c], dtype)).unwrap();
    let y = f(xv.as_tensor(), gv.as_tensor(), bv.as_tensor(), 1e-5).unwrap();
    let loss = (&y * t(w, shape, dtype)).unwrap().sum_all().unwrap();
    let grads = loss.backward().unwrap();
    let mut out = vec![flat(&y)];
    for v in [&xv, &gv, &bv] {
        out.push(flat(grads.get(v.as_tensor()).expect("missing gradient")));
    }
    out
}

struct LnCase {
    x: Vec<f64>,
    g: Vec<f64>,
    b: Vec<f64>,
    w: Vec<f64>,
}

fn ln_case(seed: u64, shape: &[usize], offset: f64) -> LnCase {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let n: usize = shape.iter().product();
    let c = *shape.last().unwrap();
    LnCase {
        x: randn(&mut rng, n, 1.0, offset),
        g: randn(&mut rng, c, 0.5, 1.0),
        b: randn(&mut rng, c, 0.5, 0.0),
        w: randn(&mut rng, n, 1.0, 0.0),
    }
}

/// Central differences of loss = Σ layer_norm(x, g, b)·w in f64 against the fused
/// backward, for every element of x, gain and bias.
#[test]
fn layer_norm_matches_finite_differences_f64() {
    for shape in [vec![1, 37], vec![3, 5, 19], vec![2, 1], vec![70, 3]] {
        let case = ln_case(1, &shape, 0.3);
        let got = ln_fwd_bwd(
            kernels::layer_norm,
            &case.x,
            &case.g,
            &case.b,
            &case.w,
            &shape,
            DType::F64,
        );
        let loss = |x: &[f64], g: &[f64], b: &[f64]| -> f64 {
            let y = kernels::layer_norm(
                &t(x, &shape, DType::F64),
                &t(g, &[g.len()], DType::F64),
                &t(b, &[b.len()], DType::F64),
                1e-5,
            )
            .unwrap();
            flat(&y).iter().zip(&case.w).map(|(y, w)| y * w).sum()
        };
        let h = 1e-6;
        let mut worst = [0f64; 3];
        for (k, name) in ["x", "gain", "bias"].iter().enumerate() {
            let mut args = [case.x.clone(), case.g.clone(), case.b.clone()];
            for i in 0..args[k].len() {
                let orig = args[k][i];
                args[k][i] = orig + h;
                let up = loss(&args[0], &args[1], &args[2]);
                args[k][i] = orig - h;
                let down = loss(&args[0], &args[1], &args[2]);
                args[k][i] = orig;
                let fd = (up - down) / (2.0 * h);
                let an = got[k + 1][i];
                worst[k] = worst[k].max((fd - an).abs() / (1.0 + fd.abs()));
            }
            println!(
                "layer_norm {shape:?} d{name}: max rel diff vs finite differences {:.2e}",
                worst[k]
            );
        }
        let ok = worst.iter().all(|&e| e < 1e-7);
        println!("layer_norm {shape:?}: {}", if ok { "PASS" } else { "FAIL" });
        assert!(ok, "{shape:?}: {worst:?}");
    }
}

/// Fused f32 vs the composed f32 reference, both against the reference in f64:
/// the fused error must be at most ~2x the reference's (plus a few ulp of floor).
#[test]
fn layer_norm_f32_error_no_worse_than_reference() {
    // A row mean of 4 exercises the two-pass variance; C = 200 is not a multiple of 16.
    for (shape, offset) in [
        (vec![70, 200], 4.0),
        (vec![33, 256], 0.0),
        (vec![1, 23], 1.0),
    ] {
        let case = ln_case(2, &shape, offset);
        let run = |f: Ln, dtype| ln_fwd_bwd(f, &case.x, &case.g, &case.b, &case.w, &shape, dtype);
        let truth = run(reference::layer_norm, DType::F64);
        let fused = run(kernels::layer_norm, DType::F32);
        let refr = run(reference::layer_norm, DType::F32);
        for (k, name) in ["y", "dx", "dgain", "dbias"].iter().enumerate() {
            let scale = truth[k].iter().fold(1f64, |m, v| m.max(v.abs()));
            let ef = max_abs_diff(&fused[k], &truth[k]);
            let er = max_abs_diff(&refr[k], &truth[k]);
            let ok = ef <= 2.0 * er + 4.0 * f32::EPSILON as f64 * scale;
            println!(
                "layer_norm {shape:?} {name}: fused err {ef:.2e}, reference f32 err {er:.2e} -> {}",
                if ok { "PASS" } else { "FAIL" }
            );
            assert!(ok, "{name}: fused {ef} vs reference {er}");
        }
    }
}

/// Same bits on every run and with 1, 2 or 3 threads: rows are chunked by a fixed
/// count and dgain/dbias partials are summed in chunk order.
#[test]
fn layer_norm_and_gelu_are_deterministic_across_runs_and_threads() {
    let shape = [300, 96];
    let case = ln_case(3, &shape, 0.5);
    let run = || {
        let mut v = ln_fwd_bwd(
            kernels::layer_norm,
            &case.x,
            &case.g,
            &case.b,
            &case.w,
            &shape,
            DType::F32,
        );
        let xv = Var::from_tensor(&t(&case.x, &shape, DType::F32)).unwrap();
        let y = kernels::gelu(xv.as_tensor()).unwrap();
        let loss = (&y * t(&case.w, &shape, DType::F32))
            .unwrap()
            .sum_all()
            .unwrap();
        let grads = loss.backward().unwrap();
        v.push(flat(&y));
        v.push(flat(grads.get(xv.as_tensor()).unwrap()));
        v.into_iter()
            .map(|t| t.into_iter().map(f64::to_bits).collect::<Vec<_>>())
            .collect::<Vec<_>>()
    };
    let first = run();
    for threads in [1, 2, 3, 2] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        let again = pool.install(run);
        let same = again == first;
        println!("{threads} threads: bitwise identical to first run: {same}");
        assert!(same, "results differ with {threads} threads");
    }
}

/// A transposed (strided) x gives the same values and gradients as its contiguous
/// copy; a constant row gives finite outputs and gradients (var = 0, rstd = 1/sqrt(eps)).
#[test]
fn layer_norm_strided_input_and_constant_row() {
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let (rows, c) = (6, 10);
    let xt = t(&randn(&mut rng, rows * c, 1.0, 0.0), &[c, rows], DType::F32);
    let g = t(&randn(&mut rng, c, 0.5, 1.0), &[c], DType::F32);
    let b = t(&randn(&mut rng, c, 0.5, 0.0), &[c], DType::F32);
    let xv = Var::from_tensor(&xt).unwrap();
    let strided = xv.as_tensor().t().unwrap();
    assert!(!strided.is_contiguous());
    let y1 = kernels::layer_norm(&strided, &g, &b, 1e-5).unwrap();
    let y2 = kernels::layer_norm(&strided.contiguous().unwrap(), &g, &b, 1e-5).unwrap();
    let d = max_abs_diff(&flat(&y1), &flat(&y2));
    let grads = y1.sqr().unwrap().sum_all().unwrap().backward().unwrap();
    let dx = grads
        .get(xv.as_tensor())
        .expect("no gradient through strided input");
    println!(
        "strided vs contiguous max diff {d:.1e}, dx shape {:?}",
        dx.dims()
    );
    assert_eq!(d, 0.0);
    assert_eq!(dx.dims(), &[c, rows]);

    let xv = Var::from_tensor(&t(&[2.5; 12], &[2, 6], DType::F32)).unwrap();
    let y = kernels::layer_norm(
        xv.as_tensor(),
        &g.narrow(0, 0, 6).unwrap(),
        &b.narrow(0, 0, 6).unwrap(),
        1e-5,
    )
    .unwrap();
    let grads = y.sqr().unwrap().sum_all().unwrap().backward().unwrap();
    let dx = flat(grads.get(xv.as_tensor()).unwrap());
    let finite = flat(&y).iter().chain(&dx).all(|v| v.is_finite());
    println!("constant rows: y and dx finite: {finite}");
    assert!(finite);
}

fn gelu_fwd_bwd(
    f: fn(&Tensor) -> Result<Tensor>,
    x: &[f64],
    w: &[f64],
    dtype: DType,
) -> Vec<Vec<f64>> {
    let xv = Var::from_tensor(&t(x, &[x.len()], dtype)).unwrap();
    let y = f(xv.as_tensor()).unwrap();
    let loss = (&y * t(w, &[w.len()], dtype)).unwrap().sum_all().unwrap();
    let grads = loss.backward().unwrap();
    vec![flat(&y), flat(grads.get(xv.as_tensor()).unwrap())]
}

/// f64: the fused backward against central differences, over [-9, 9] (both tails).
#[test]
fn gelu_matches_finite_differences_f64() {
    let x: Vec<f64> = (0..37).map(|i| -9.0 + 0.5 * i as f64 + 0.013).collect();
    let w = vec![1.0; x.len()];
    let got = gelu_fwd_bwd(kernels::gelu, &x, &w, DType::F64);
    let f = |v: f64| flat(&kernels::gelu(&t(&[v], &[1], DType::F64)).unwrap())[0];
    let h = 1e-6;
    let worst = x
        .iter()
        .zip(&got[1])
        .map(|(&v, &an)| {
            let fd = (f(v + h) - f(v - h)) / (2.0 * h);
            (fd - an).abs() / (1.0 + fd.abs())
        })
        .fold(0.0, f64::max);
    // The forward against the textbook tanh form, 0.5·x·(1 + tanh(k(x + 0.044715x³))).
    let k = (2.0 / std::f64::consts::PI).sqrt();
    let fwd = x
        .iter()
        .zip(&got[0])
        .map(|(&v, &y)| (0.5 * v * (1.0 + (k * (v + 0.044715 * v * v * v)).tanh()) - y).abs())
        .fold(0.0, f64::max);
    println!("gelu f64: dx vs finite differences {worst:.2e}, y vs tanh formula {fwd:.2e}");
    assert!(worst < 1e-7 && fwd < 1e-14);
}

/// Fused f32 vs candle's f32 gelu, both against f64.
#[test]
fn gelu_f32_error_no_worse_than_reference() {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let mut x = randn(&mut rng, 20_001, 3.0, 0.0);
    x.extend([-100.0, -30.0, -10.0, 0.0, 1e-30, 10.0, 100.0]);
    let w = randn(&mut rng, x.len(), 1.0, 0.0);
    let truth = gelu_fwd_bwd(reference::gelu, &x, &w, DType::F64);
    let fused = gelu_fwd_bwd(kernels::gelu, &x, &w, DType::F32);
    let refr = gelu_fwd_bwd(reference::gelu, &x, &w, DType::F32);
    for (k, name) in ["y", "dx"].iter().enumerate() {
        let ef = max_abs_diff(&fused[k], &truth[k]);
        let er = max_abs_diff(&refr[k], &truth[k]);
        let ok = ef <= 2.0 * er && fused[k].iter().all(|v| v.is_finite());
        println!(
            "gelu {name}: fused err {ef:.2e}, reference f32 err {er:.2e} -> {}",
            if ok { "PASS" } else { "FAIL" }
        );
        assert!(ok, "{name}: fused {ef} vs reference {er}");
    }
    let n = x.len();
    println!(
        "gelu(-100) = {}, gelu'(-100)·w = {}",
        fused[0][n - 7],
        fused[1][n - 7]
    );
    assert!(fused[0][n - 7].abs() < 1e-30 && fused[1][n - 7].abs() < 1e-30);
}
