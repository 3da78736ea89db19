//! The bf16 matrix product of `--dtype bf16` (src/kernels/gemm_bf16.rs) against an f64
//! product of the same bf16-rounded inputs, on odd shapes, every operand layout, a
//! strided destination and accumulation; the AVX512-BF16 kernel against the portable
//! one, bit for bit; the same bits at any thread count; and factors stored in bf16
//! (the activations `--dtype bf16` keeps for its products) giving the bits of the f32
//! values they were rounded from.

use half::bf16;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::mem::MaybeUninit;
use tinylm::cpu::simd;
use tinylm::kernels::gemm_bf16::{self, from_bf16, to_bf16, Factor};

/// Held by every test: one of them caps the SIMD level process-wide, and the others
/// must not run the portable kernel meanwhile without knowing it.
static CAP: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn uniform(rng: &mut ChaCha8Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.gen_range(-1.0f32..1.0)).collect()
}

/// An [r, c] matrix stored row-major (`t` false) or column-major (`t` true), as
/// (data, row stride, column stride).
fn layout(x: &[f32], (r, c): (usize, usize), t: bool) -> (Vec<f32>, usize, usize) {
    if !t {
        return (x.to_vec(), c, 1);
    }
    let mut y = vec![0f32; r * c];
    for i in 0..r {
        for j in 0..c {
            y[j * r + i] = x[i * c + j];
        }
    }
    (y, 1, r)
}

struct Case {
    dst: Vec<f32>,
    /// The f64 product of the rounded inputs (plus the initial dst when accumulating).
    exact: Vec<f64>,
    /// Σ_k |a·b| per entry: the scale the f32 sums' error is measured against.
    scale: Vec<f64>,
}

/// Runs one product [m, k]·[k, n] into a destination of row stride n + pad; `init`
/// Some(x) accumulates onto x.
fn run(
    rng: &mut ChaCha8Rng,
    threads: usize,
    (m, n, k): (usize, usize, usize),
    (ta, tb): (bool, bool),
    pad: usize,
    accumulate: bool,
) -> Case {
    let (a, b) = (uniform(rng, m * k), uniform(rng, k * n));
    let rs = n + pad;
    let init = uniform(rng, m * rs);
    let (al, bl) = (layout(&a, (m, k), ta), layout(&b, (k, n), tb));
    let mut dst: Vec<MaybeUninit<f32>> = init.iter().map(|&x| MaybeUninit::new(x)).collect();
    gemm_bf16::gemm(
        threads,
        (m, n, k),
        (&mut dst, rs),
        accumulate,
        (&al.0, al.1, al.2),
        (&bl.0, bl.1, bl.2),
    );
    // SAFETY: every entry was initialised above.
    let dst: Vec<f32> = dst
        .into_iter()
        .map(|x| unsafe { x.assume_init() })
        .collect();
    let r = |x: f32| from_bf16(to_bf16(x)) as f64;
    let (mut exact, mut scale) = (vec![0f64; m * n], vec![0f64; m * n]);
    for i in 0..m {
        for j in 0..n {
            let (mut s, mut sa) = (0f64, 0f64);
            for kk in 0..k {
                let p = r(a[i * k + kk]) * r(b[kk * n + j]);
                s += p;
                sa += p.abs();
            }
            if accumulate {
                s += init[i * rs + j] as f64;
                sa += (init[i * rs + j] as f64).abs();
            }
            exact[i * n + j] = s;
            scale[i * n + j] = sa;
        }
    }
    // Entries between the rows are left as they were.
    for i in 0..m {
        for j in n..rs {
            assert_eq!(
                dst[i * rs + j],
                init[i * rs + j],
                "padding ({i}, {j}) written"
            );
        }
    }
    let dst = (0..m * n).map(|e| dst[(e / n) * rs + e % n]).collect();
    Case { dst, exact, scale }
}

/// Shapes around the kernel's blocks: micro-tiles of 12 x 32, passes of 256 k, tasks
/// of 96 x 256; odd k leaves a half pair.
const SHAPES: [(usize, usize, usize); 7] = [
    (1, 1, 1),
    (13, 33, 5),
    (12, 32, 256),
    (97, 65, 300),
    (7, 300, 513),
    (200, 17, 64),
    (110, 270, 259),
];

#[test]
fn matches_the_f64_product_of_the_rounded_inputs_on_every_layout() {
    let _cap = CAP.lock().unwrap_or_else(|e| e.into_inner());
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    for &shape in &SHAPES {
        for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
            for (pad, accumulate) in [(0, false), (3, true)] {
                let c = run(&mut rng, 2, shape, (ta, tb), pad, accumulate);
                let k = shape.2 as f64 + 1.0;
                for (e, ((&d, &x), &s)) in c.dst.iter().zip(&c.exact).zip(&c.scale).enumerate() {
                    // f32 sums of exact products: |error| ≤ k·2^-24·Σ|a·b| at worst;
                    // the tolerance is that bound, which a wrong pairing or a missing
                    // k exceeds by orders of magnitude.
                    let tol = k * f32::EPSILON as f64 * 0.5 * s + 1e-30;
                    assert!(
                        (d as f64 - x).abs() <= tol,
                        "{shape:?} t=({ta},{tb}) acc={accumulate} entry {e}: {d} vs {x} (tol {tol:e})"
                    );
                }
            }
        }
    }
}

#[test]
fn rounds_the_inputs_to_bf16() {
    let _cap = CAP.lock().unwrap_or_else(|e| e.into_inner());
    // 1 + 2^-9 rounds to 1 in bf16: the product of [1 + 2^-9] and [1] is exactly 1.
    let a = [1.0 + 1.0 / 512.0f32];
    let b = [1.0f32];
    let mut dst = [MaybeUninit::new(0f32)];
    gemm_bf16::gemm(1, (1, 1, 1), (&mut dst, 1), false, (&a, 1, 1), (&b, 1, 1));
    // SAFETY: written by the product.
    assert_eq!(unsafe { dst[0].assume_init() }, 1.0);
}

/// k = 0: a fresh product is all zeros, an accumulated one leaves dst as it was.
#[test]
fn an_empty_k_writes_zeros_or_nothing() {
    let _cap = CAP.lock().unwrap_or_else(|e| e.into_inner());
    let (a, b): (Vec<f32>, Vec<f32>) = (vec![], vec![]);
    for acc in [false, true] {
        let mut dst = vec![MaybeUninit::new(7f32); 3 * 5];
        gemm_bf16::gemm(2, (3, 4, 0), (&mut dst, 5), acc, (&a, 0, 1), (&b, 4, 1));
        // SAFETY: every entry was initialised above.
        let dst: Vec<f32> = dst
            .into_iter()
            .map(|x| unsafe { x.assume_init() })
            .collect();
        for (e, &d) in dst.iter().enumerate() {
            let want = if acc || e % 5 == 4 { 7.0 } else { 0.0 };
            assert_eq!(d, want, "acc={acc} entry {e}");
        }
    }
}

#[test]
fn same_bits_at_any_thread_count() {
    let _cap = CAP.lock().unwrap_or_else(|e| e.into_inner());
    let shape = (110, 270, 259);
    let one = run(
        &mut ChaCha8Rng::seed_from_u64(3),
        1,
        shape,
        (false, true),
        1,
        true,
    );
    for threads in [2, 3] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        let many = pool.install(|| {
            run(
                &mut ChaCha8Rng::seed_from_u64(3),
                threads,
                shape,
                (false, true),
                1,
                true,
            )
        });
        assert_eq!(one.dst, many.dst, "{threads} threads");
    }
}

#[test]
fn the_avx512bf16_kernel_gives_the_portable_kernels_bits() {
    let _cap = CAP.lock().unwrap_or_else(|e| e.into_inner());
    if !gemm_bf16::native() {
        eprintln!("skipped: this CPU has no AVX512-BF16; the portable kernel ran everywhere");
        return;
    }
    for &shape in &SHAPES {
        for layout in [(false, false), (false, true), (true, false), (true, true)] {
            for (pad, acc) in [(0, false), (2, true)] {
                let seed = ChaCha8Rng::seed_from_u64(5);
                let native = run(&mut seed.clone(), 2, shape, layout, pad, acc);
                simd::set_cap(Some(simd::Level::Avx2));
                let portable = run(&mut seed.clone(), 2, shape, layout, pad, acc);
                simd::set_cap(None);
                assert_eq!(native.dst, portable.dst, "{shape:?} {layout:?} acc={acc}");
            }
        }
    }
}

/// dst = A·B with the factors as given, through the bf16 product.
fn product<A: Factor, B: Factor>(
    (m, n, k): (usize, usize, usize),
    a: (&[A], usize, usize),
    b: (&[B], usize, usize),
) -> Vec<u32> {
    let mut dst = vec![MaybeUninit::new(0f32); m * n];
    gemm_bf16::gemm(2, (m, n, k), (&mut dst, n), false, a, b);
    // SAFETY: every entry was initialised above.
    dst.into_iter()
        .map(|x| unsafe { x.assume_init() }.to_bits())
        .collect()
}

/// A factor stored as bf16 (rounded by `to_bf16`) gives the product the bits its f32
/// values give, in either place, on every layout, in both kernels; with subnormal
/// values among the inputs, which both kernels (and `to_bf16`) flush to zero.
#[test]
fn factors_stored_in_bf16_give_the_bits_of_their_f32_values() {
    let _cap = CAP.lock().unwrap_or_else(|e| e.into_inner());
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let mut values = |n: usize| -> Vec<f32> {
        let mut v = uniform(&mut rng, n);
        for (i, x) in v.iter_mut().enumerate() {
            match i % 13 {
                0 => *x *= 1e-39, // subnormal
                5 => *x *= 3e4,
                _ => {}
            }
        }
        v
    };
    let rounded =
        |x: &[f32]| -> Vec<bf16> { x.iter().map(|&x| bf16::from_bits(to_bf16(x))).collect() };
    let caps = if gemm_bf16::native() {
        vec![None, Some(simd::Level::Avx2)]
    } else {
        vec![None]
    };
    for cap in caps {
        simd::set_cap(cap);
        for &(m, n, k) in &SHAPES {
            for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
                let (a, b) = (values(m * k), values(k * n));
                let (al, bl) = (layout(&a, (m, k), ta), layout(&b, (k, n), tb));
                let (ah, bh) = (rounded(&al.0), rounded(&bl.0));
                let f32s = product((m, n, k), (&al.0, al.1, al.2), (&bl.0, bl.1, bl.2));
                let what = format!("{:?} t=({ta},{tb}) cap {cap:?}", (m, n, k));
                let a16 = product((m, n, k), (&ah, al.1, al.2), (&bl.0, bl.1, bl.2));
                assert_eq!(a16, f32s, "A in bf16, {what}");
                let b16 = product((m, n, k), (&al.0, al.1, al.2), (&bh, bl.1, bl.2));
                assert_eq!(b16, f32s, "B in bf16, {what}");
                let both = product((m, n, k), (&ah, al.1, al.2), (&bh, bl.1, bl.2));
                assert_eq!(both, f32s, "both in bf16, {what}");
            }
        }
    }
    simd::set_cap(None);
}
