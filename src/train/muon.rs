//! Muon's update of one weight matrix (Jordan et al. 2024, the modded-nanogpt
//! speedrun): Nesterov momentum, orthogonalised by a Newton–Schulz iteration, so that
//! every direction of the matrix moves by about the same amount however unevenly the
//! gradient spreads over them.
//!
//! For a parameter W (R, K) with gradient G, momentum buffer M and learning rate lr:
//!   M ← μ·M + G
//!   U ← G + μ·M                         (Nesterov)
//!   O ← NewtonSchulz(U)                 ≈ U·(UᵀU)^(-1/2): U's singular values → ~1
//!   W ← W·(1 - lr·wd) - lr·0.2·sqrt(max(R, K))·O
//! The factor 0.2·sqrt(max(R, K)) gives the update the RMS of a typical AdamW update
//! (Moonshot's "Muon is scalable", 2025), so one learning rate and schedule serve the
//! matrices (Muon) and everything else (AdamW) alike.

use crate::cpu::as_uninit;
use crate::model::native::{gemm_into_strided, gemm_into_threads};

/// μ, the momentum of the speedrun and of Moonshot's runs.
pub const MOMENTUM: f32 = 0.95;

/// Newton–Schulz steps: five of the quintic below bring singular values from
/// (0, 1] into roughly [0.7, 1.2], which is all Muon needs (exact orthogonality is
/// not better, measured by Jordan et al.).
const NS_STEPS: usize = 5;
/// X ← (a·I + b·A + c·A²)·X with A = X·Xᵀ: the coefficients maximise the slope at 0
/// so that small singular values grow fast (modded-nanogpt).
const NS_COEFFS: (f32, f32, f32) = (3.4445, -4.7750, 2.0315);

/// One product on the calling thread: the trainer runs the matrices' iterations in
/// parallel, one per thread, since the S x S products are too small to split well.
fn gemm_1(
    shape: (usize, usize, usize),
    dst: &mut [std::mem::MaybeUninit<f32>],
    acc: bool,
    a: (&[f32], usize, usize),
    b: (&[f32], usize, usize),
) {
    gemm_into_threads(1, shape, dst, acc, a, b)
}

/// Rows of a block of a symmetric product ([`gemm_sym`]): only the diagonal and upper
/// blocks are computed, [`sym_share`] of the full product's FLOPs (5/8 at S = 256).
/// Smaller blocks skip more FLOPs but run the gemm on thinner products (the heights
/// compared are in BENCHMARKS.md, "Muon's symmetric products").
pub const SYM_BLOCK: usize = 64;

/// The share of a full S x S product's FLOPs that [`gemm_sym`] runs with blocks of
/// `h` rows: block row [i0, i1) computes columns i0..S.
fn sym_share(s: usize, h: usize) -> f64 {
    let h = h.max(1);
    let done: usize = (0..s).step_by(h).map(|i0| h.min(s - i0) * (s - i0)).sum();
    done as f64 / (s * s).max(1) as f64
}

/// dst (S, S) = A (S, K) · B (K, S), for a product known to be symmetric: the
/// Newton–Schulz iteration's Gram matrix X·Xᵀ and every product of two polynomials in
/// it (they commute). Computes the diagonal and upper blocks of `h` rows on the
/// calling thread and mirrors the rest, so dst is symmetric outside its diagonal
/// blocks. h ≥ S is the full product.
fn gemm_sym(
    (s, k, h): (usize, usize, usize),
    dst: &mut [f32],
    (a, a_rs, a_cs): (&[f32], usize, usize),
    (b, b_rs, b_cs): (&[f32], usize, usize),
) {
    assert!(dst.len() == s * s, "gemm_sym: dst is not {s} x {s}");
    let h = h.max(1);
    let mut i0 = 0;
    while i0 < s {
        let i1 = i0.saturating_add(h).min(s);
        // dst[i0..i1, i0..S] = A[i0..i1, :] · B[:, i0..S]
        gemm_into_strided(
            1,
            (i1 - i0, s - i0, k),
            (as_uninit(&mut dst[i0 * s + i0..]), s),
            false,
            (&a[i0 * a_rs..], a_rs, a_cs),
            (&b[i0 * b_cs..], b_rs, b_cs),
        );
        // dst[i0..i1, 0..i0] from the blocks above the diagonal, computed earlier, 16
        // columns at a time: the 16 source rows stay in cache while r runs down.
        for c0 in (0..i0).step_by(16) {
            for r in i0..i1 {
                for c in c0..(c0 + 16).min(i0) {
                    dst[r * s + c] = dst[c * s + r];
                }
            }
        }
        i0 = i1;
    }
}

/// RMS-matching factor of the update: 0.2·sqrt(max(R, K)).
pub fn update_scale(rows: usize, cols: usize) -> f64 {
    0.2 * (rows.max(cols) as f64).sqrt()
}

/// x (R, K), row-major, replaced by its Newton–Schulz orthogonalisation: the same
/// singular vectors, singular values near 1. A zero matrix stays zero. Works on the
/// small side's Gram matrix (S = min(R, K), L = max(R, K)), by whichever of the two
/// equal iterations below costs fewer FLOPs.
pub fn orthogonalize(x: &mut [f32], rows: usize, cols: usize) {
    orthogonalize_in_blocks(x, rows, cols, SYM_BLOCK)
}

/// [`orthogonalize`] with the symmetric products in blocks of `h` rows ([`SYM_BLOCK`]
/// in training; h ≥ min(R, K): whole products): for benchmarks of the block height.
pub fn orthogonalize_in_blocks(x: &mut [f32], rows: usize, cols: usize, h: usize) {
    assert_eq!(
        x.len(),
        rows * cols,
        "orthogonalize: x is not {rows} x {cols}"
    );
    // Frobenius norm ≥ spectral norm: after this every singular value is ≤ 1.
    // Eight running sums, so that the loop vectorises (one sum waits on every add).
    let mut lanes = [0f64; 8];
    for chunk in x.chunks(8) {
        for (l, &v) in lanes.iter_mut().zip(chunk) {
            *l += (v as f64) * (v as f64);
        }
    }
    let norm = lanes.iter().sum::<f64>().sqrt();
    let inv = (1.0 / (norm + 1e-7)) as f32;
    x.iter_mut().for_each(|v| *v *= inv);
    if gram_is_cheaper(rows, cols, h) {
        iterate_on_gram(x, rows, cols, h)
    } else {
        iterate_on_x(x, rows, cols, h)
    }
}

/// FLOPs, with f = [`sym_share`] the share of a symmetric product computed: on X,
/// 5·(2·f·L·S² + 2·L·S² + 2·f·S³); on the Gram matrix, 2·f·L·S² + 2·L·S² + 17·2·f·S³
/// (X is read at the start and written at the end only). At S = 256 (f = 5/8) the
/// Gram way wins from L ≈ 1.15·S (the MLP's (4C, C) matrices: 34·S³ against 71·S³;
/// q/k/v's (3C, C): 31 against 55); square matrices stay on X (22.5·S³ against 24.5).
fn gram_is_cheaper(rows: usize, cols: usize, h: usize) -> bool {
    let f = sym_share(rows.min(cols), h);
    let (l, s) = (rows.max(cols) as f64, rows.min(cols) as f64);
    let steps = NS_STEPS as f64;
    let gram = 2.0 * f * l * s * s;
    let on_x = steps * (gram + 2.0 * l * s * s + 2.0 * f * s.powi(3));
    let on_gram = gram + 2.0 * l * s * s + (4.0 * steps - 3.0) * 2.0 * f * s.powi(3);
    on_gram < on_x
}

/// A (S, S) = X·Xᵀ when R ≤ K (wide), Xᵀ·X otherwise (tall).
fn gram(x: &[f32], (r, k): (usize, usize), a: &mut [f32], h: usize) {
    if r <= k {
        gemm_sym((r, k, h), a, (x, k, 1), (x, 1, k));
    } else {
        gemm_sym((k, r, h), a, (x, 1, k), (x, k, 1));
    }
}

/// P = a·I + b·A + c·A², given A and A² (S, S).
fn poly(a: &[f32], a2: &[f32], s: usize, p: &mut [f32]) {
    let (ca, cb, cc) = NS_COEFFS;
    for ((pv, &av), &a2v) in p.iter_mut().zip(a).zip(a2) {
        *pv = cb * av + cc * a2v;
    }
    for e in (0..s * s).step_by(s + 1) {
        p[e] = ca + cb * a[e] + cc * a2[e];
    }
}

/// The textbook iteration: X ← P(A)·X (wide) or X·P(A) (tall), A recomputed from X.
fn iterate_on_x(x: &mut [f32], r: usize, k: usize, h: usize) {
    let s = r.min(k);
    let (mut y, mut a, mut a2, mut p) = (
        vec![0f32; r * k],
        vec![0f32; s * s],
        vec![0f32; s * s],
        vec![0f32; s * s],
    );
    let (mut cur, mut next): (&mut [f32], &mut [f32]) = (x, &mut y);
    for _ in 0..NS_STEPS {
        gram(cur, (r, k), &mut a, h);
        gemm_sym((s, s, h), &mut a2, (&a, s, 1), (&a, s, 1));
        poly(&a, &a2, s, &mut p);
        if r <= k {
            gemm_1((r, k, r), as_uninit(next), false, (&p, r, 1), (cur, k, 1));
        } else {
            gemm_1((r, k, k), as_uninit(next), false, (cur, k, 1), (&p, k, 1));
        }
        std::mem::swap(&mut cur, &mut next);
    }
    // After an odd number of steps the result sits in the other copy.
    if NS_STEPS % 2 == 1 {
        next.copy_from_slice(cur);
    }
}

/// The same iteration carried by the Gram matrix alone: with P_t = P(A_t), the next
/// X is P_t·X, so the next A is P_t·A_t·P_t, and the last X is P_4···P_0·X_0. Every
/// P_t is a polynomial in A_0, so they commute and the product is taken in any order
/// (and applies on the right of a tall X the same way).
fn iterate_on_gram(x: &mut [f32], r: usize, k: usize, h: usize) {
    let s = r.min(k);
    let (mut a, mut a2, mut p, mut q, mut t) = (
        vec![0f32; s * s],
        vec![0f32; s * s],
        vec![0f32; s * s],
        vec![0f32; s * s],
        vec![0f32; s * s],
    );
    gram(x, (r, k), &mut a, h);
    for step in 0..NS_STEPS {
        gemm_sym((s, s, h), &mut a2, (&a, s, 1), (&a, s, 1));
        poly(&a, &a2, s, &mut p);
        if step + 1 < NS_STEPS {
            // A ← P·A·P (t = P·A, then t·P; both symmetric, as P and A commute)
            gemm_sym((s, s, h), &mut t, (&p, s, 1), (&a, s, 1));
            gemm_sym((s, s, h), &mut a, (&t, s, 1), (&p, s, 1));
        }
        if step == 0 {
            q.copy_from_slice(&p);
        } else {
            gemm_sym((s, s, h), &mut t, (&p, s, 1), (&q, s, 1));
            std::mem::swap(&mut q, &mut t);
        }
    }
    let mut y = vec![0f32; r * k];
    if r <= k {
        gemm_1((r, k, r), as_uninit(&mut y), false, (&q, r, 1), (x, k, 1)); // Q·X
    } else {
        gemm_1((r, k, k), as_uninit(&mut y), false, (x, k, 1), (&q, k, 1)); // X·Q
    }
    x.copy_from_slice(&y);
}

/// The first half of a Muon step of a (R, K) parameter with gradient `g` (times
/// `grad_scale`, the clipping factor) and momentum buffer `m`: updates `m` and returns
/// the orthogonalised Nesterov momentum O. Reads no parameter, so the trainer runs it
/// for every matrix in parallel.
pub fn direction(
    g: &[f32],
    m: &mut [f32],
    (rows, cols): (usize, usize),
    grad_scale: f32,
) -> Vec<f32> {
    let n = rows * cols;
    assert!(
        g.len() == n && m.len() == n,
        "muon: gradient or momentum is not {rows} x {cols}"
    );
    let mut u: Vec<f32> = m
        .iter_mut()
        .zip(g)
        .map(|(m, &g)| {
            let g = g * grad_scale;
            *m = MOMENTUM * *m + g;
            g + MOMENTUM * *m
        })
        .collect();
    orthogonalize(&mut u, rows, cols);
    u
}

/// The second half: p ← p·decay - step·O, with decay = 1 - lr·wd and
/// step = lr·[`update_scale`] (computed in f64 by the caller, rounded once).
pub fn apply(p: &mut [f32], o: &[f32], decay: f32, step: f32) {
    assert_eq!(
        p.len(),
        o.len(),
        "muon: parameter and update differ in size"
    );
    for (p, &o) in p.iter_mut().zip(o) {
        *p = *p * decay - step * o;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn random(rows: usize, cols: usize, seed: u64) -> Vec<f32> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        (0..rows * cols).map(|_| rng.gen_range(-1.0..1.0)).collect()
    }

    /// The same iteration in f64 with naive loops, always on X·Xᵀ (wide form of the
    /// transpose for tall matrices): an independent statement of the algorithm.
    fn reference(x: &[f32], rows: usize, cols: usize) -> Vec<f64> {
        let tall = rows > cols;
        let (r, k) = if tall { (cols, rows) } else { (rows, cols) };
        let at = |i: usize, j: usize| {
            if tall {
                x[j * cols + i]
            } else {
                x[i * cols + j]
            }
        };
        let mut m: Vec<f64> = (0..r * k).map(|e| at(e / k, e % k) as f64).collect();
        let norm = m.iter().map(|v| v * v).sum::<f64>().sqrt() + 1e-7;
        m.iter_mut().for_each(|v| *v /= norm);
        let (a, b, c) = (3.4445, -4.7750, 2.0315);
        for _ in 0..5 {
            let mut g = vec![0f64; r * r];
            for i in 0..r {
                for j in 0..r {
                    g[i * r + j] = (0..k).map(|t| m[i * k + t] * m[j * k + t]).sum();
                }
            }
            let mut poly = vec![0f64; r * r];
            for i in 0..r {
                for j in 0..r {
                    let gg: f64 = (0..r).map(|t| g[i * r + t] * g[t * r + j]).sum();
                    poly[i * r + j] = b * g[i * r + j] + c * gg;
                }
            }
            let mut next = vec![0f64; r * k];
            for i in 0..r {
                for j in 0..k {
                    let px: f64 = (0..r).map(|t| poly[i * r + t] * m[t * k + j]).sum();
                    next[i * k + j] = a * m[i * k + j] + px;
                }
            }
            m = next;
        }
        // Back to (rows, cols).
        (0..rows * cols)
            .map(|e| {
                let (i, j) = (e / cols, e % cols);
                if tall {
                    m[j * k + i]
                } else {
                    m[i * k + j]
                }
            })
            .collect()
    }

    #[test]
    fn orthogonalize_matches_an_f64_reference_on_odd_shapes() {
        // (70, 130) and (130, 70): Gram matrices of a 64-row block and a 6-row tail, so
        // that every symmetric product of the iteration mirrors entries.
        for (rows, cols) in [
            (7, 13),
            (13, 7),
            (9, 9),
            (1, 5),
            (33, 17),
            (70, 130),
            (130, 70),
        ] {
            let x0 = random(rows, cols, (rows * 100 + cols) as u64);
            let mut x = x0.clone();
            orthogonalize(&mut x, rows, cols);
            let want = reference(&x0, rows, cols);
            let err = x
                .iter()
                .zip(&want)
                .map(|(&g, &w)| (g as f64 - w).abs())
                .fold(0f64, f64::max);
            assert!(err < 1e-4, "{rows}x{cols}: max error {err:.2e}");
        }
    }

    /// f64 product of two f32 views (data, row stride, column stride), (m, k)·(k, n).
    fn product64(
        (m, k, n): (usize, usize, usize),
        (a, a_rs, a_cs): (&[f32], usize, usize),
        (b, b_rs, b_cs): (&[f32], usize, usize),
    ) -> Vec<f64> {
        (0..m * n)
            .map(|e| {
                let (i, j) = (e / n, e % n);
                (0..k)
                    .map(|t| a[i * a_rs + t * a_cs] as f64 * b[t * b_rs + j * b_cs] as f64)
                    .sum()
            })
            .collect()
    }

    /// The symmetric product equals the f64 product of the same operands at every
    /// block height, on odd sizes, for each kind the iteration runs: a wide Gram matrix
    /// X·Xᵀ and a tall one XᵀX (strided operands), A·A, and P·A with P = a·I + b·A +
    /// c·A² (two different commuting factors); every entry finite, and the mirrored
    /// ones (outside the diagonal blocks) exactly symmetric.
    #[test]
    fn symmetric_product_equals_the_full_one() {
        for (s, k) in [(1, 3), (17, 5), (45, 33), (70, 9)] {
            let x = random(s, k, (s * 7 + k) as u64); // (S, K): wide Gram X·Xᵀ
            let xt = random(k, s, (s * 5 + k) as u64); // (K, S): tall Gram XᵀX
            for h in [1, 7, 16, 64] {
                let mut g = vec![f32::NAN; s * s];
                let mut gt = vec![f32::NAN; s * s];
                let mut gg = vec![f32::NAN; s * s];
                let mut p = vec![f32::NAN; s * s];
                let mut pg = vec![f32::NAN; s * s];
                gemm_sym((s, k, h), &mut g, (&x, k, 1), (&x, 1, k));
                gemm_sym((s, k, h), &mut gt, (&xt, 1, s), (&xt, s, 1));
                gemm_sym((s, s, h), &mut gg, (&g, s, 1), (&g, s, 1));
                poly(&g, &gg, s, &mut p);
                gemm_sym((s, s, h), &mut pg, (&p, s, 1), (&g, s, 1));
                let cases = [
                    ("X·Xᵀ", &g, product64((s, k, s), (&x, k, 1), (&x, 1, k))),
                    ("XᵀX", &gt, product64((s, k, s), (&xt, 1, s), (&xt, s, 1))),
                    ("A·A", &gg, product64((s, s, s), (&g, s, 1), (&g, s, 1))),
                    ("P·A", &pg, product64((s, s, s), (&p, s, 1), (&g, s, 1))),
                ];
                for (what, got, want) in cases {
                    let scale = want.iter().fold(0f64, |m, v| m.max(v.abs()));
                    for (e, (&a, &b)) in got.iter().zip(&want).enumerate() {
                        let err = (a as f64 - b).abs();
                        assert!(
                            a.is_finite() && err <= 1e-5 * scale,
                            "{what} s {s} k {k} h {h} [{e}]: {a} against {b}"
                        );
                    }
                    for r in 0..s {
                        for c in 0..s {
                            if r / h != c / h {
                                let (u, l) = (got[r * s + c], got[c * s + r]);
                                assert_eq!(u, l, "{what} s {s} h {h} ({r}, {c})");
                            }
                        }
                    }
                }
            }
        }
    }

    /// The two iterations are the same map: equal up to rounding on every shape.
    #[test]
    fn gram_iteration_equals_the_textbook_one() {
        // Block heights 7 and 16 split every shape's symmetric products, the
        // training one (64) the larger ones, 4096 none.
        for (rows, cols) in [(7, 13), (13, 7), (9, 9), (1, 5), (40, 12), (64, 256)] {
            let mut x = random(rows, cols, 7 + rows as u64);
            let norm = x.iter().map(|v| v * v).sum::<f32>().sqrt();
            x.iter_mut().for_each(|v| *v /= norm);
            let mut whole = x.clone();
            iterate_on_x(&mut whole, rows, cols, 4096);
            for h in [7, 16, SYM_BLOCK, 4096] {
                let (mut on_x, mut on_gram) = (x.clone(), x.clone());
                iterate_on_x(&mut on_x, rows, cols, h);
                iterate_on_gram(&mut on_gram, rows, cols, h);
                for (got, what) in [(&on_x, "on X"), (&on_gram, "on the Gram matrix")] {
                    for (i, (a, b)) in got.iter().zip(&whole).enumerate() {
                        assert!(
                            (a - b).abs() < 1e-4,
                            "{rows}x{cols} h {h} {what}: [{i}] {a} against {b}"
                        );
                    }
                }
            }
        }
        assert!(gram_is_cheaper(1024, 256, SYM_BLOCK) && gram_is_cheaper(256, 768, SYM_BLOCK));
        assert!(!gram_is_cheaper(256, 256, SYM_BLOCK));
    }

    /// Singular values spread over a decade come out near 1: X·Xᵀ is close to I.
    #[test]
    fn orthogonalize_evens_out_singular_values() {
        // (3, 5) with orthogonal rows of norms 1, 0.3, 0.1 (singular values).
        let (rows, cols) = (3, 5);
        let mut x = vec![0f32; rows * cols];
        for (i, s) in [1.0f32, 0.3, 0.1].into_iter().enumerate() {
            x[i * cols + 2 * i] = s;
        }
        orthogonalize(&mut x, rows, cols);
        for i in 0..rows {
            for j in 0..rows {
                let dot: f32 = (0..cols).map(|t| x[i * cols + t] * x[j * cols + t]).sum();
                if i == j {
                    assert!((0.45..1.5).contains(&dot), "σ² {dot} of row {i}");
                } else {
                    assert!(dot.abs() < 1e-6, "rows {i}, {j}: {dot}");
                }
            }
        }
        // On random rectangular matrices (a square one's smallest singular value is
        // too small to reach 1 in five steps) every singular value ends in [0.65, 1.2]
        // (the quintic maps (0.005, 1] into [0.68, 1.16]): the extreme eigenvalues of
        // the small Gram matrix lie in [0.42, 1.44].
        for (rows, cols) in [(16, 40), (40, 16), (64, 256)] {
            let mut x = random(rows, cols, 3);
            orthogonalize(&mut x, rows, cols);
            let (lo, hi) = gram_eigen_range(&x, rows, cols);
            assert!(
                lo > 0.42 && hi < 1.44,
                "{rows}x{cols}: σ² in [{lo:.3}, {hi:.3}]"
            );
        }
    }

    /// (smallest, largest) eigenvalue of the S x S Gram matrix of x, by power
    /// iteration on G and on λmax·I - G (G is positive semi-definite).
    fn gram_eigen_range(x: &[f32], rows: usize, cols: usize) -> (f64, f64) {
        let s = rows.min(cols);
        let at = |i: usize, t: usize| {
            if rows <= cols {
                x[i * cols + t] as f64
            } else {
                x[t * cols + i] as f64
            }
        };
        let l = rows.max(cols);
        let g: Vec<f64> = (0..s * s)
            .map(|e| (0..l).map(|t| at(e / s, t) * at(e % s, t)).sum())
            .collect();
        // The largest eigenvalue of shift·I - G, or of G at shift 0.
        let top = |shift: f64| {
            let mut v = vec![1.0f64; s];
            let mut lambda = 0.0;
            for _ in 0..500 {
                let w: Vec<f64> = (0..s)
                    .map(|i| {
                        let gv: f64 = (0..s).map(|j| g[i * s + j] * v[j]).sum();
                        if shift == 0.0 {
                            gv
                        } else {
                            shift * v[i] - gv
                        }
                    })
                    .collect();
                lambda = w.iter().map(|x| x * x).sum::<f64>().sqrt();
                v = w.iter().map(|x| x / lambda).collect();
            }
            lambda
        };
        let hi = top(0.0);
        (hi - top(hi), hi)
    }

    #[test]
    fn zero_gradient_only_decays_and_stays_finite() {
        let (rows, cols) = (4, 6);
        let mut p = random(rows, cols, 5);
        let before = p.clone();
        let (g, mut m) = (vec![0f32; 24], vec![0f32; 24]);
        let o = direction(&g, &mut m, (rows, cols), 1.0);
        apply(
            &mut p,
            &o,
            1.0 - 0.01 * 0.1,
            0.01 * update_scale(rows, cols) as f32,
        );
        for (a, b) in p.iter().zip(&before) {
            assert_eq!(*a, b * (1.0 - 0.01 * 0.1));
        }
        assert!(m.iter().all(|&v| v == 0.0));
    }

    /// The step is the decay plus lr·0.2·sqrt(max(R, K)) times the orthogonalised
    /// Nesterov momentum, at any clipping factor.
    #[test]
    fn update_follows_the_definition() {
        let (rows, cols) = (5, 8);
        let g = random(rows, cols, 11);
        let m0 = random(rows, cols, 12);
        let p0 = random(rows, cols, 13);
        for scale in [1.0f32, 1e-3] {
            let (mut p, mut m) = (p0.clone(), m0.clone());
            let o = direction(&g, &mut m, (rows, cols), scale);
            apply(
                &mut p,
                &o,
                1.0 - 0.002,
                (0.02 * update_scale(rows, cols)) as f32,
            );
            let mut u: Vec<f32> = m0
                .iter()
                .zip(&g)
                .map(|(&m, &g)| g * scale + MOMENTUM * (MOMENTUM * m + g * scale))
                .collect();
            let m_want: Vec<f32> = m0
                .iter()
                .zip(&g)
                .map(|(&m, &g)| MOMENTUM * m + g * scale)
                .collect();
            assert_eq!(m, m_want);
            orthogonalize(&mut u, rows, cols);
            let step = (0.02 * update_scale(rows, cols)) as f32;
            for ((&p, &p0), &o) in p.iter().zip(&p0).zip(&u) {
                assert!((p - (p0 * (1.0 - 0.002) - step * o)).abs() < 1e-6);
            }
        }
        assert_eq!(update_scale(768, 256), 0.2 * 768f64.sqrt());
    }
}
