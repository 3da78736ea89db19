//! The one vectorisable `exp` every fused kernel uses (cross-entropy, attention, GELU).
//!
//! libm's `expf` is a scalar call: inside the kernels' inner loops it would stop LLVM
//! from vectorising them and cost more than the rest of the loop. This one is
//! branch-free arithmetic on f32 lanes.

/// exp(x) for f32: Cody-Waite reduction x = k·ln2 + r, |r| ≤ ln2/2, Cephes' minimax
/// polynomial for e^r (≈1 ulp), and 2^k built in the exponent bits (no float→int
/// conversion). Inputs are clamped to [-87, 88] so that 2^k stays a normal number;
/// below -87 (where e^x leaves the normal range, including -inf: a causal mask, a
/// masked logit) the result is exactly 0, so a softmax gives such entries probability 0
/// and gradient 0; above 88 it saturates at e^88 (GELU divides by 1 + e^x there). NaN
/// propagates.
///
/// The reduction and the polynomial use fused multiply-adds (`mul_add`): one rounding
/// per step and half the instructions on AVX2/AVX-512. `mul_add` is exactly rounded on
/// every target, so every compiled copy (AVX-512, AVX2, baseline) gives the same bits;
/// on a CPU without FMA the baseline copy pays a libm call per step (correct, slow).
#[inline(always)]
pub(crate) fn exp_f32(x: f32) -> f32 {
    let y = exp_core(x.clamp(-87.0, 88.0)); // NaN stays NaN
    if x < -87.0 {
        0.0
    } else {
        y
    }
}

/// [`exp_f32`] for the arguments a softmax exponentiates, x = y - max(y) ≤ 0: the same
/// bits for every x ≤ 88 (so for all of them), two instructions fewer. The clamp is
/// not needed: below -87 the result is replaced by 0 whatever the garbage exponent
/// bits computed from x were (the integer steps wrap), and x ≤ 0 cannot overflow.
#[inline(always)]
pub(crate) fn exp_f32_nonpos(x: f32) -> f32 {
    let y = exp_core(x);
    if x < -87.0 {
        0.0
    } else {
        y
    }
}

/// [`exp_f32_nonpos`] on W lanes, each step on every lane before the next: one lane's
/// steps are one long dependency chain, and the kernels' 16-lane loops left the FMA
/// units waiting on it (on AVX2 two vectors in flight, on AVX-512 one). The same
/// operations per lane ([`exp_core_lanes`]), so the same bits.
#[inline(always)]
pub(crate) fn exp_f32_nonpos_lanes<const W: usize>(x: &[f32; W], y: &mut [f32; W]) {
    exp_core_lanes::<W, true>(x, y);
}

/// log2(e), the reduction's scale: k = round(x·log2e).
pub(crate) const EXP_LOG2E: f32 = std::f32::consts::LOG2_E;
/// ln2's high part, exact in a few bits (k·LN2_HI is exact).
pub(crate) const EXP_LN2_HI: f32 = 0.693_359_4;
/// ln2 - EXP_LN2_HI.
pub(crate) const EXP_LN2_LO: f32 = -2.121_944_4e-4;
/// 1.5·2^23: adding it rounds to an integer held in the low mantissa bits.
pub(crate) const EXP_MAGIC: f32 = 12_582_912.0;
/// Cephes' minimax coefficients for (e^r - 1 - r)/r², highest degree first; the last
/// is Cephes' 5.0000001201e-1, which is 0.5 in f32.
pub(crate) const EXP_POLY: [f32; 6] = [
    1.987_569_1e-4,
    1.398_199_9e-3,
    8.333_452e-3,
    4.166_579_6e-2,
    1.666_666_5e-1,
    0.5,
];

/// e^x for x in [-87, 88] (any other x gives garbage, never a panic): the reduction,
/// the polynomial and the 2^k scaling of [`exp_f32`], one lane ([`exp_core_lanes`]).
#[inline(always)]
fn exp_core(x: f32) -> f32 {
    let mut y = [0f32];
    exp_core_lanes::<1, false>(&[x], &mut y);
    y[0]
}

/// [`exp_core`] on W lanes, each step on every lane before the next, and with `CUT`
/// exactly 0 where x < -87 (in the same loop as the scaling; BENCHMARKS.md,
/// "Measurements behind the code"): the one place the exponential's steps are written.
/// (`loss::kernel::short_rows` spells the same steps in AVX-512 intrinsics; a test
/// holds the two to the same bits.)
#[inline(always)]
fn exp_core_lanes<const W: usize, const CUT: bool>(x: &[f32; W], y: &mut [f32; W]) {
    let mut t = [0f32; W];
    for l in 0..W {
        t[l] = x[l].mul_add(EXP_LOG2E, EXP_MAGIC);
    }
    let mut r = [0f32; W];
    for l in 0..W {
        let k = t[l] - EXP_MAGIC;
        r[l] = (-k).mul_add(EXP_LN2_LO, (-k).mul_add(EXP_LN2_HI, x[l]));
    }
    let mut p = [EXP_POLY[0]; W];
    for &c in &EXP_POLY[1..] {
        for l in 0..W {
            p[l] = p[l].mul_add(r[l], c);
        }
    }
    for l in 0..W {
        let er = (p[l] * r[l]).mul_add(r[l], r[l]) + 1.0;
        let ki = t[l].to_bits().wrapping_sub(EXP_MAGIC.to_bits()) as i32; // k as an integer
        let v = er * f32::from_bits((ki.wrapping_add(127) as u32) << 23);
        y[l] = if CUT && x[l] < -87.0 { 0.0 } else { v };
    }
}

/// 2^r for r in [-1/2, 1/2] as 1 + r·(c1 + r·(c2 + ...)): minimax for relative error
/// at degree 5 (Lawson's weighted least squares on Chebyshev nodes), highest degree
/// first. Relative error 1.0e-7 in exact arithmetic, 1.8e-7 evaluated in f32 FMAs.
pub(crate) const EXP2_POLY: [f32; 5] = [
    1.330_882_4e-3,
    9.671_517e-3,
    5.550_582_3e-2,
    2.402_224_2e-1,
    6.931_470_6e-1,
];

/// e^(x - m) for x ≤ m through base 2, for rows whose logits are bf16 (8 significant
/// bits): u = (x - m)·log2(e), k = round(u) (ties to even), 2^(u-k) by [`EXP2_POLY`],
/// scaled by 2^k. Five instructions a vector fewer than [`exp_f32_nonpos`] on AVX-512
/// (`vrndscaleps`, `vscalefps`; `loss::kernel::bf16_rows` spells the same steps, and a
/// test holds the two to the same bits). Relative error below 1e-6 for x - m ≥ -10
/// and below 6e-6 down to the cut (the rounding of u adds to the polynomial's
/// 1.8e-7), whatever m: ~1/4000 of a bf16 ulp. e^0 is exactly 1. Exactly 0 where
/// u < -126 (x - m below about -87.3, and x = -inf); as u ≤ 0, every other result is a
/// normal number and the scaling is exact. NaN propagates.
#[inline(always)]
pub(crate) fn exp_shifted_base2(x: f32, m: f32) -> f32 {
    let mut y = [0f32];
    exp_shifted_base2_lanes::<1>(&[x], m, &mut y);
    y[0]
}

/// [`exp_shifted_base2`] on W lanes, each step on every lane before the next (see
/// [`exp_f32_nonpos_lanes`]).
#[inline(always)]
pub(crate) fn exp_shifted_base2_lanes<const W: usize>(x: &[f32; W], m: f32, y: &mut [f32; W]) {
    for l in 0..W {
        // Not fma(x, log2e, -m·log2e): that drops the rounding of m·log2e, which at
        // large m shifts every e (and the loss) and can overflow them.
        let u = (x[l] - m) * EXP_LOG2E;
        // Adding and removing 1.5·2^23 rounds |u| < 2^22 to an integer, ties to even,
        // as `vrndscaleps` does; the sum's low bits hold k.
        let t = u + EXP_MAGIC;
        let r = u - (t - EXP_MAGIC);
        let mut p = EXP2_POLY[0];
        for &c in &EXP2_POLY[1..] {
            p = p.mul_add(r, c);
        }
        let p = p.mul_add(r, 1.0);
        let k = t.to_bits().wrapping_sub(EXP_MAGIC.to_bits()) as i32;
        let v = p * f32::from_bits((k.wrapping_add(127) as u32) << 23);
        y[l] = if u < -126.0 { 0.0 } else { v };
    }
}

/// Arguments x ≤ 0 where an exp's edges show: signed zero, a subnormal, both sides of
/// the -87 cut, huge negatives (whose exponent arithmetic wraps), -inf.
#[cfg(test)]
pub(crate) const NONPOS_EDGES: [f32; 10] = [
    -0.0,
    -1e-40,
    -86.999,
    -87.0,
    -87.0001,
    -1e7,
    -1.74e7,
    -3e38,
    f32::MIN,
    f32::NEG_INFINITY,
];

#[cfg(test)]
mod tests {
    use super::*;

    /// Against libm's f64 exp over the whole normal range, in ulps of the f64 truth
    /// rounded to f32; and the edges every caller relies on.
    #[test]
    fn exp_f32_within_two_ulp_with_exact_edges() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let got = exp_f32(x) as f64;
            let want = (x as f64).exp();
            let ulp = (want as f32).abs() * f32::EPSILON;
            worst = worst.max((got - want).abs() / ulp as f64);
            x += 0.0137;
        }
        println!("exp_f32 worst error on [-87, 88]: {worst:.3} ulp");
        assert!(worst < 2.0, "exp_f32 error {worst} ulp");
        assert_eq!(exp_f32(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_f32(-1000.0), 0.0);
        assert_eq!(exp_f32(-87.5), 0.0);
        assert_eq!(exp_f32(0.0), 1.0);
        assert!(exp_f32(f32::NAN).is_nan());
        assert_eq!(exp_f32(200.0), exp_f32(88.0));
        assert!(exp_f32(200.0).is_finite());
    }

    /// The unclamped copy gives exp_f32's bits on the whole x ≤ 0 line, including -inf,
    /// huge negatives (whose exponent arithmetic wraps) and NaN.
    #[test]
    fn exp_f32_nonpos_is_exp_f32_for_nonpositive_x() {
        let mut x = 0.0f32;
        while x > -100.0 {
            assert_eq!(exp_f32_nonpos(x).to_bits(), exp_f32(x).to_bits(), "x = {x}");
            x -= 0.000_97;
        }
        for x in NONPOS_EDGES {
            assert_eq!(exp_f32_nonpos(x).to_bits(), exp_f32(x).to_bits(), "x = {x}");
        }
        assert!(exp_f32_nonpos(f32::NAN).is_nan());
    }

    /// The base-2 exponential of bf16 rows: within 1e-6 relative of libm's f64 exp
    /// for x - m in [-10, 0] and 6e-6 down to the cut, at small and huge m (where
    /// a fused x·log2e - m·log2e went wrong), exactly 1 at x = m, exact edges, and
    /// the lane-stepped copy gives the one-lane bits.
    #[test]
    fn exp_shifted_base2_within_bf16_grade_error_with_exact_edges() {
        let (mut worst, mut worst_near) = (0f64, 0f64);
        for m in [
            0.0f32, 0.75, -3.5, 9.25, -16.0, 16.0, 1e3, 1e7, 3.003e9, -1e9,
        ] {
            let step = 0.000_713f32.max(m.abs() * 1e-6);
            let mut k = 0;
            loop {
                let x = m - k as f32 * step;
                if x - m < -87.0 {
                    break;
                }
                let got = exp_shifted_base2(x, m) as f64;
                let want = (x as f64 - m as f64).exp();
                let rel = (got - want).abs() / want;
                worst = worst.max(rel);
                if x - m >= -10.0 {
                    worst_near = worst_near.max(rel);
                }
                k += 1;
            }
            assert_eq!(exp_shifted_base2(m, m), 1.0, "m = {m}");
            assert_eq!(exp_shifted_base2(f32::NEG_INFINITY, m), 0.0);
            assert_eq!(exp_shifted_base2(m - 88.0 * (1.0 + m.abs()), m), 0.0);
            assert!(exp_shifted_base2(f32::NAN, m).is_nan());
        }
        assert!(exp_shifted_base2(-87.0, 0.0) >= f32::MIN_POSITIVE);
        println!("exp_shifted_base2: worst relative error {worst:.2e} down to the cut, {worst_near:.2e} on [-10, 0]");
        assert!(worst < 6e-6 && worst_near < 1e-6);
        for m in [0.0f32, 5.5, 3.003e9] {
            let step = 0.000_97f32.max(m * 1e-6);
            let mut xs: Vec<f32> = (0..100_000).map(|i| m - (i as f32) * step).collect();
            xs.extend(NONPOS_EDGES.map(|d| m + d));
            xs.resize(xs.len().div_ceil(64) * 64, -1.0);
            for c in xs.chunks_exact(64) {
                let mut got = [0f32; 64];
                exp_shifted_base2_lanes::<64>(c.try_into().unwrap(), m, &mut got);
                for (g, &x) in got.iter().zip(c) {
                    assert_eq!(g.to_bits(), exp_shifted_base2(x, m).to_bits(), "x = {x}");
                }
            }
        }
    }

    /// The lane-stepped copy gives exp_f32_nonpos's bits on every lane.
    #[test]
    fn exp_f32_nonpos_lanes_is_exp_f32_nonpos() {
        let mut xs: Vec<f32> = (0..100_000).map(|i| -(i as f32) * 0.000_97).collect();
        xs.extend(NONPOS_EDGES);
        xs.push(f32::NAN);
        xs.resize(xs.len().div_ceil(64) * 64, -1.0);
        for c in xs.chunks_exact(64) {
            let mut got = [0f32; 64];
            exp_f32_nonpos_lanes::<64>(c.try_into().unwrap(), &mut got);
            for (g, &x) in got.iter().zip(c) {
                let want = exp_f32_nonpos(x);
                assert!(
                    g.to_bits() == want.to_bits() || (g.is_nan() && want.is_nan()),
                    "x = {x}"
                );
            }
        }
    }
}
