//! The fused attention (the op in src/attention/fused.rs over src/attention/kernel/)
//! against the composed reference (src/attention/reference.rs) and against finite
//! differences.
//!
//! Small shapes with small tiles (block 8x8 or 4x8) exercise partial tiles, diagonal
//! tiles and the causal skip in milliseconds; a few cases use the default 64x64 tiles
//! with T = 65..130 so that the production tiling is covered too.

use candle_core::{DType, Device, Result, Tensor, Var};
use rand::{Rng, SeedableRng};
use tinylm::attention::{cached_attention, causal_attention, fused, reference, FusedOptions};

fn randn(
    shape: (usize, usize, usize, usize),
    seed: u64,
    scale: f64,
    dtype: DType,
) -> Result<Tensor> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let n = shape.0 * shape.1 * shape.2 * shape.3;
    // Box-Muller: standard normal samples.
    let data: Vec<f64> = (0..n)
        .map(|_| {
            let u1: f64 = rng.gen_range(1e-12..1.0);
            let u2: f64 = rng.gen();
            scale * (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
        })
        .collect();
    Tensor::from_vec(data, shape, &Device::Cpu)?.to_dtype(dtype)
}

fn opts(causal: bool, bq: usize, bk: usize) -> FusedOptions {
    FusedOptions {
        causal,
        block_q: bq,
        block_k: bk,
    }
}

/// Composed non-causal attention (no mask), for the fused kernel's full mode.
fn full_reference(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
    let d = q.dim(3)?;
    let s = (q.matmul(&k.t()?)? / (d as f64).sqrt())?;
    candle_nn::ops::softmax(&s, candle_core::D::Minus1)?.matmul(v)
}

type AttnFn<'a> = &'a dyn Fn(&Tensor, &Tensor, &Tensor) -> Result<Tensor>;

/// Output and (dq, dk, dv) of sum(attn(q, k, v) ∘ g).
fn fwd_bwd(f: AttnFn, q: &Tensor, k: &Tensor, v: &Tensor, g: &Tensor) -> Result<[Tensor; 4]> {
    let (qv, kv, vv) = (
        Var::from_tensor(q)?,
        Var::from_tensor(k)?,
        Var::from_tensor(v)?,
    );
    let o = f(qv.as_tensor(), kv.as_tensor(), vv.as_tensor())?;
    let grads = (&o * g)?.sum_all()?.backward()?;
    let get = |x: &Var| grads.get(x.as_tensor()).expect("gradient missing").clone();
    Ok([o.detach(), get(&qv), get(&kv), get(&vv)])
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> Result<f64> {
    let a = a.to_dtype(DType::F64)?;
    let b = b.to_dtype(DType::F64)?;
    (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f64>()
}

fn max_abs(a: &Tensor) -> Result<f64> {
    a.to_dtype(DType::F64)?
        .abs()?
        .flatten_all()?
        .max(0)?
        .to_scalar::<f64>()
}

const NAMES: [&str; 4] = ["out", "dq", "dk", "dv"];

/// Every (shape, tiles) below in f64: the fused output and gradients equal the composed
/// reference's (autograd through matmul/mask/softmax) up to f64 rounding.
#[test]
fn fused_f64_matches_reference_forward_and_gradients() -> Result<()> {
    // (B, H, Tq, Tk, D, block_q, block_k, causal)
    let cases = [
        (1, 1, 1, 1, 16, 64, 64, true),
        (2, 3, 13, 13, 16, 4, 8, true),
        (1, 2, 19, 19, 32, 8, 8, true),
        (1, 1, 70, 70, 64, 64, 64, true),
        (1, 1, 33, 33, 128, 8, 16, true),
        (1, 2, 21, 21, 24, 8, 8, true),  // D not a multiple of 16
        (1, 2, 5, 37, 16, 4, 8, true),   // KV-cache shape: queries are the last 5
        (1, 2, 1, 23, 32, 64, 64, true), // one query against a cache
        (1, 2, 17, 17, 32, 8, 8, false), // full attention
        (1, 1, 9, 30, 16, 4, 8, false),  // full, Tq != Tk
    ];
    for (i, &(b, h, tq, tk, d, bq, bk, causal)) in cases.iter().enumerate() {
        let s = 10 * i as u64;
        let q = randn((b, h, tq, d), s, 1.0, DType::F64)?;
        let k = randn((b, h, tk, d), s + 1, 1.0, DType::F64)?;
        let v = randn((b, h, tk, d), s + 2, 1.0, DType::F64)?;
        let g = randn((b, h, tq, d), s + 3, 1.0, DType::F64)?;
        let o = opts(causal, bq, bk);
        let fused_f = move |q: &Tensor, k: &Tensor, v: &Tensor| fused::attention(q, k, v, o);
        let got = fwd_bwd(&fused_f, &q, &k, &v, &g)?;
        let want = if causal {
            fwd_bwd(&reference::cached_attention, &q, &k, &v, &g)?
        } else {
            fwd_bwd(&full_reference, &q, &k, &v, &g)?
        };
        for (n, (a, w)) in NAMES.iter().zip(got.iter().zip(&want)) {
            let diff = max_abs_diff(a, w)?;
            let tol = 1e-12 * (1.0 + max_abs(w)?);
            let verdict = if diff <= tol { "ok" } else { "FAIL" };
            println!("f64 {b}x{h}x{tq}x{tk}x{d} tiles {bq}x{bk} causal={causal} {n}: max|diff| {diff:.2e} (tol {tol:.1e}) {verdict}");
            assert!(diff <= tol, "{n} differs from the reference by {diff}");
        }
    }
    Ok(())
}

/// Central differences of L = sum(attn(q, k, v) ∘ g) in f64 along random directions u
/// (and along single coordinates) against <dL/dx, u> from the fused backward.
/// Truncation error is O(eps²·|L'''|) ≈ 1e-10 and rounding O(1e-16/eps) ≈ 1e-11 for
/// eps = 1e-5, so a relative tolerance of 1e-7 is loose yet catches any real error.
#[test]
fn fused_gradients_match_finite_differences_f64() -> Result<()> {
    // (B, H, T, D, block): T not a multiple of the tile, T = 1, D in 16, 32, 64, 128.
    let cases = [
        (1, 1, 1, 16, 8),
        (1, 2, 11, 16, 4),
        (2, 1, 19, 32, 8),
        (1, 1, 67, 64, 64),
        (1, 1, 13, 128, 8),
    ];
    let eps = 1e-5;
    for (ci, &(b, h, t, d, blk)) in cases.iter().enumerate() {
        let s = 100 + 10 * ci as u64;
        let x = [
            randn((b, h, t, d), s, 1.0, DType::F64)?,
            randn((b, h, t, d), s + 1, 1.0, DType::F64)?,
            randn((b, h, t, d), s + 2, 1.0, DType::F64)?,
        ];
        let g = randn((b, h, t, d), s + 3, 1.0, DType::F64)?;
        let o = opts(true, blk, blk);
        let f = move |q: &Tensor, k: &Tensor, v: &Tensor| fused::attention(q, k, v, o);
        let loss = |x: &[Tensor; 3]| -> Result<f64> {
            (f(&x[0], &x[1], &x[2])? * &g)?
                .sum_all()?
                .to_scalar::<f64>()
        };
        let [_, dq, dk, dv] = fwd_bwd(&f, &x[0], &x[1], &x[2], &g)?;
        let grads = [dq, dk, dv];
        for wrt in 0..3 {
            let mut worst = 0f64;
            let n = b * h * t * d;
            // 3 random directions and 3 single coordinates (first, middle, last).
            let mut dirs = Vec::new();
            for r in 0..3 {
                dirs.push(randn((b, h, t, d), s + 50 + r, 1.0, DType::F64)?);
            }
            for &idx in &[0, n / 2, n - 1] {
                let mut e = vec![0f64; n];
                e[idx] = 1.0;
                dirs.push(Tensor::from_vec(e, (b, h, t, d), &Device::Cpu)?);
            }
            for u in &dirs {
                let mut xp = x.clone();
                let mut xm = x.clone();
                xp[wrt] = (&x[wrt] + (u * eps)?)?;
                xm[wrt] = (&x[wrt] - (u * eps)?)?;
                let fd = (loss(&xp)? - loss(&xm)?) / (2.0 * eps);
                let an = (&grads[wrt] * u)?.sum_all()?.to_scalar::<f64>()?;
                worst = worst.max((fd - an).abs() / (1.0 + an.abs()));
            }
            let verdict = if worst < 1e-7 { "ok" } else { "FAIL" };
            println!("finite differences {b}x{h}x{t}x{d} block {blk} d{}: worst rel err {worst:.2e} {verdict}", NAMES[wrt + 1]);
            assert!(
                worst < 1e-7,
                "finite differences disagree for {}",
                NAMES[wrt + 1]
            );
        }
    }
    Ok(())
}

/// f32 accuracy: against an f64 reference, the fused kernel's error is no worse than
/// about twice the composed f32 reference's own error (plus a floor of a few ulps of
/// the largest value, for outputs where both are nearly exact).
#[test]
fn fused_f32_error_is_within_twice_the_reference_error() -> Result<()> {
    let cases = [
        (2, 4, 100, 64),
        (1, 2, 1, 16),
        (1, 2, 130, 128),
        (2, 2, 77, 32),
    ];
    for (ci, &(b, h, t, d)) in cases.iter().enumerate() {
        let s = 200 + 10 * ci as u64;
        let x64: Vec<Tensor> = (0..4)
            .map(|r| randn((b, h, t, d), s + r, 1.5, DType::F64))
            .collect::<Result<_>>()?;
        let x32: Vec<Tensor> = x64
            .iter()
            .map(|x| x.to_dtype(DType::F32))
            .collect::<Result<_>>()?;
        // The exact answer for the f32-rounded inputs.
        let x64r: Vec<Tensor> = x32
            .iter()
            .map(|x| x.to_dtype(DType::F64))
            .collect::<Result<_>>()?;
        let exact = fwd_bwd(
            &reference::causal_attention,
            &x64r[0],
            &x64r[1],
            &x64r[2],
            &x64r[3],
        )?;
        let naive = fwd_bwd(
            &reference::causal_attention,
            &x32[0],
            &x32[1],
            &x32[2],
            &x32[3],
        )?;
        let fused = fwd_bwd(&causal_attention, &x32[0], &x32[1], &x32[2], &x32[3])?;
        for i in 0..4 {
            let e_ref = max_abs_diff(&naive[i], &exact[i])?;
            let e_fused = max_abs_diff(&fused[i], &exact[i])?;
            let floor = 4.0 * f32::EPSILON as f64 * max_abs(&exact[i])?;
            let ok = e_fused <= 2.0 * e_ref + floor;
            println!(
                "f32 {b}x{h}x{t}x{d} {}: fused err {e_fused:.2e}, reference err {e_ref:.2e} (bound {:.2e}) {}",
                NAMES[i],
                2.0 * e_ref + floor,
                if ok { "ok" } else { "FAIL" }
            );
            assert!(
                ok,
                "{}: fused error {e_fused} vs reference error {e_ref}",
                NAMES[i]
            );
        }
    }
    Ok(())
}

/// Extreme scores (q scaled by 1e3: softmax is one-hot, exp underflows for all but one
/// key) and tiny ones: no NaN or inf in any row of the output or the gradients.
#[test]
fn fused_has_no_nan_for_extreme_inputs() -> Result<()> {
    for &(t, qscale) in &[(1, 1e3), (5, 1e3), (70, 1e3), (70, 1e-30), (33, 0.0)] {
        let q = randn((1, 2, t, 32), 300, qscale, DType::F32)?;
        let k = randn((1, 2, t, 32), 301, 1.0, DType::F32)?;
        let v = randn((1, 2, t, 32), 302, 1.0, DType::F32)?;
        let g = randn((1, 2, t, 32), 303, 1.0, DType::F32)?;
        let r = fwd_bwd(&causal_attention, &q, &k, &v, &g)?;
        for (n, x) in NAMES.iter().zip(&r) {
            let v: Vec<f32> = x.flatten_all()?.to_vec1()?;
            let bad = v.iter().filter(|x| !x.is_finite()).count();
            println!(
                "T={t} q scale {qscale:e} {n}: {bad} non-finite values {}",
                if bad == 0 { "ok" } else { "FAIL" }
            );
            assert_eq!(bad, 0, "{n} has non-finite values");
        }
    }
    Ok(())
}

fn bits(ts: &[Tensor]) -> Result<Vec<Vec<u32>>> {
    ts.iter()
        .map(|t| {
            Ok(t.flatten_all()?
                .to_vec1::<f32>()?
                .iter()
                .map(|x| x.to_bits())
                .collect())
        })
        .collect()
}

/// Repeated runs give bitwise identical outputs and gradients, and so do 1 and 2
/// threads: with B·H = 1 and 2 threads the backward takes the two-pass schedule, with
/// 1 thread the one-sweep schedule, and both must perform the same operations.
#[test]
fn fused_is_bitwise_deterministic() -> Result<()> {
    for &(b, h, t) in &[(2, 3, 150), (1, 1, 200)] {
        let x: Vec<Tensor> = (0..4)
            .map(|r| randn((b, h, t, 64), 400 + r, 1.0, DType::F32))
            .collect::<Result<_>>()?;
        let run = || -> Result<Vec<Vec<u32>>> {
            bits(&fwd_bwd(&causal_attention, &x[0], &x[1], &x[2], &x[3])?)
        };
        let first = run()?;
        for rep in 0..3 {
            assert!(run()? == first, "run {rep} differs");
        }
        for threads in [1, 2] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let other = pool.install(run)?;
            println!(
                "{b}x{h}x{t}x64: {threads} thread(s) bitwise equal to default pool: {}",
                other == first
            );
            assert!(other == first, "{threads} threads differ");
        }
    }
    Ok(())
}

/// Every SIMD level's compiled copy of the tile loops (`tinylm::cpu::simd`) gives the
/// same output and gradients, bit for bit: the fused multiply-adds are exactly rounded
/// everywhere. The tiles' register blocking differs by level too (AVX-512 4 x 4
/// chunks, otherwise 6 x 1; at 131 rows a 64-row tile ends in a 4-row block and the
/// last tile of 3 rows is a 2-row and a 1-row block), and
/// `tile_ops`' unit test runs both blockings on any CPU. Capping the level is
/// process-wide, which can only slow the other tests.
#[test]
fn fused_is_bitwise_equal_at_every_simd_level() -> Result<()> {
    use tinylm::cpu::simd::{self, Level};
    let x: Vec<Tensor> = (0..4)
        .map(|r| randn((1, 2, 131, 64), 500 + r, 1.0, DType::F32))
        .collect::<Result<_>>()?;
    let run = || -> Result<Vec<Vec<u32>>> {
        bits(&fwd_bwd(&causal_attention, &x[0], &x[1], &x[2], &x[3])?)
    };
    let widest = run()?;
    let capped: Vec<_> = [Level::Baseline, Level::Avx2]
        .into_iter()
        .map(|cap| {
            simd::set_cap(Some(cap));
            (cap, run())
        })
        .collect();
    simd::set_cap(None);
    for (cap, r) in capped {
        assert!(
            r? == widest,
            "capped at {cap:?}: differs from {:?}",
            simd::detected()
        );
    }
    println!(
        "1x2x131x64: levels 0, 1 and {:?} bitwise equal",
        simd::detected()
    );
    Ok(())
}

/// The model's sampling call: queries are the last Tq of Tk cached positions.
#[test]
fn cached_attention_matches_reference() -> Result<()> {
    for &(tq, tk, d) in &[(1, 1, 16), (1, 40, 64), (3, 40, 32), (1, 300, 128)] {
        let q = randn((2, 3, tq, d), 500, 1.0, DType::F32)?;
        let k = randn((2, 3, tk, d), 501, 1.0, DType::F32)?;
        let v = randn((2, 3, tk, d), 502, 1.0, DType::F32)?;
        let got = cached_attention(&q, &k, &v)?;
        let want = reference::cached_attention(&q, &k, &v)?;
        let diff = max_abs_diff(&got, &want)?;
        println!(
            "cached Tq={tq} Tk={tk} D={d}: max|diff| {diff:.2e} {}",
            if diff < 1e-5 { "ok" } else { "FAIL" }
        );
        assert!(diff < 1e-5);
    }
    Ok(())
}

/// q, k, v straight out of a transpose (non-contiguous) give the same result as
/// contiguous copies, gradients included.
#[test]
fn fused_accepts_non_contiguous_inputs() -> Result<()> {
    let (b, t, h, d) = (2, 37, 3, 32);
    let x: Vec<Tensor> = (0..3)
        .map(|r| randn((b, t, h, d), 600 + r, 1.0, DType::F32))
        .collect::<Result<_>>()?;
    let g = randn((b, h, t, d), 603, 1.0, DType::F32)?;
    let xt: Vec<Tensor> = x.iter().map(|x| x.transpose(1, 2)).collect::<Result<_>>()?;
    assert!(!xt[0].is_contiguous());
    let xc: Vec<Tensor> = xt.iter().map(|x| x.contiguous()).collect::<Result<_>>()?;
    let a = fwd_bwd(&causal_attention, &xt[0], &xt[1], &xt[2], &g)?;
    let c = fwd_bwd(&causal_attention, &xc[0], &xc[1], &xc[2], &g)?;
    for (n, (a, c)) in NAMES.iter().zip(a.iter().zip(&c)) {
        let diff = max_abs_diff(a, c)?;
        println!("non-contiguous {n}: max|diff| {diff:e}");
        assert_eq!(diff, 0.0);
    }
    Ok(())
}
