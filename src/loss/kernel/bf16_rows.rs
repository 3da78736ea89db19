//! The three passes of a bf16 row on AVX-512, for the general kernel (`super::row`).
//!
//! On a CPU that runs 512-bit operations at half rate (Zen 4), the generic loops over
//! `Elem::load` are bound by their vector instructions, not by the row's bytes
//! (BENCHMARKS.md, "The bf16 cross-entropy's own SIMD passes"). Here:
//!
//! * pass A loads 32 values a time: shifted left, the even ones are f32; masked, the
//!   odd ones are (the max does not care about the order);
//! * pass B takes the base-2 exponential (`fastmath::exp_shifted_base2`: (x - m)·log2e,
//!   `vrndscaleps`, five FMAs, `vscalefps`; 11 instructions a vector where x - m and
//!   the f32 kernel's exponential take 16) four vectors at a time, step by step, and
//!   sums each vector as it is stored;
//! * pass C computes a·e - b in one FMA, rounds 32 values to bf16 with one
//!   `vcvtne2ps2bf16` where the CPU has AVX512-BF16 (integer arithmetic elsewhere),
//!   and streams each 64-byte line of the gradient straight out, with no staging row.
//!
//! Same bits as the generic loops over bf16 rows (tested; `Elem::exp_shifted` gives
//! them the same exponential, `elem::bf16_grad` the same gradient step): each lane
//! sums the same values in the same order, and subnormal gradients become zeros of
//! their sign in both, as `vcvtne2ps2bf16` makes them. Only the max is taken in
//! another order, which can change nothing but the sign of a zero max (see
//! `short_rows`).

use super::elem::bf16_grad;
use crate::fastmath::{exp_shifted_base2, EXP2_POLY, EXP_LOG2E};
use std::arch::x86_64::*;
use std::mem::MaybeUninit;

/// 16 bf16 values (bits) from `p` as f32: zero-extended to 32 bits, shifted up.
///
/// # Safety
/// `p .. p + 16` must be readable; the CPU must have AVX-512 F.
#[inline(always)]
unsafe fn widen(p: *const u16) -> __m512 {
    // SAFETY: the caller's contract.
    let h = unsafe { _mm256_loadu_si256(p.cast()) };
    _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h)))
}

/// Pass A: the max of the bf16 row `x` (bits), NaN skipped as `row::pass_max` skips it
/// (`vmaxps` returns its second operand, the running max, when the first is NaN). A
/// 64-byte load holds 32 values: shifted left, the even ones are f32; masked, the
/// odd ones are. The max does not care about the order.
///
/// # Safety
/// The CPU must have AVX-512 F, BW and VL.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
pub(super) unsafe fn row_max(x: &[u16]) -> f32 {
    let n = x.len();
    let p = x.as_ptr();
    let (mut m0, mut m1) = (
        _mm512_set1_ps(f32::NEG_INFINITY),
        _mm512_set1_ps(f32::NEG_INFINITY),
    );
    let high = _mm512_set1_epi32(0xFFFF_0000u32 as i32);
    let mut j = 0;
    while j + 32 <= n {
        // SAFETY: j + 32 <= n.
        let v = unsafe { _mm512_loadu_si512(p.add(j).cast()) };
        m0 = _mm512_max_ps(_mm512_castsi512_ps(_mm512_slli_epi32::<16>(v)), m0);
        m1 = _mm512_max_ps(_mm512_castsi512_ps(_mm512_and_si512(v, high)), m1);
        j += 32;
    }
    if j + 16 <= n {
        // SAFETY: j + 16 <= n.
        m0 = _mm512_max_ps(unsafe { widen(p.add(j)) }, m0);
        j += 16;
    }
    let mut m = _mm512_reduce_max_ps(_mm512_max_ps(m1, m0));
    for &h in &x[j..] {
        let v = f32::from_bits((h as u32) << 16);
        m = if v > m { v } else { m };
    }
    m
}

/// [`exp_shifted_base2`] of G vectors of 16 logits x (row max m), step for step
/// (the same roundings, so the same bits), each step on all G before the next (see
/// `short_rows::exp_nonpos_group`). `vrndscaleps` rounds to nearest even as the magic
/// constant does, and `vscalefps` multiplies by 2^k exactly: every result above the
/// cut is a normal number.
///
/// # Safety
/// The CPU must have AVX-512 F and FMA.
#[inline(always)]
unsafe fn exp_base2_group<const G: usize>(x: [__m512; G], m: __m512) -> [__m512; G] {
    let mut u = x;
    for j in 0..G {
        u[j] = _mm512_mul_ps(_mm512_sub_ps(x[j], m), _mm512_set1_ps(EXP_LOG2E));
    }
    let mut k = u;
    for j in 0..G {
        k[j] = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(u[j]);
    }
    let mut r = u;
    for j in 0..G {
        r[j] = _mm512_sub_ps(u[j], k[j]);
    }
    let mut p = [_mm512_set1_ps(EXP2_POLY[0]); G];
    for &c in &EXP2_POLY[1..] {
        for j in 0..G {
            p[j] = _mm512_fmadd_ps(p[j], r[j], _mm512_set1_ps(c));
        }
    }
    for j in 0..G {
        p[j] = _mm512_fmadd_ps(p[j], r[j], _mm512_set1_ps(1.0));
    }
    for j in 0..G {
        // Below -126 (including -inf) exactly 0; NaN is not below and stays NaN.
        let keep = _mm512_cmp_ps_mask::<_CMP_NLT_UQ>(u[j], _mm512_set1_ps(-126.0));
        p[j] = _mm512_maskz_scalef_ps(keep, p[j], k[j]);
    }
    p
}

/// Pass B over a block of a bf16 row (bits): e_j = exp(x_j - m) into `e`, added into
/// the lane sums `s` in the order `row::exp_block` adds them. `pf(k)` prefetches the
/// next row's share of 16-element chunk k.
///
/// # Safety
/// `e` must be as long as `x`; the CPU must have AVX-512 F, BW and VL, and FMA.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
pub(super) unsafe fn exp_block(
    x: &[u16],
    m: f32,
    e: &mut [f32],
    s: &mut [f32; 16],
    pf: impl Fn(usize),
) {
    let n = x.len();
    assert_eq!(e.len(), n);
    let (xp, ep) = (x.as_ptr(), e.as_mut_ptr());
    let vm = _mm512_set1_ps(m);
    // SAFETY: `s` holds 16 f32.
    let mut acc = unsafe { _mm512_loadu_ps(s.as_ptr()) };
    let mut j = 0;
    while j + 64 <= n {
        for c in 0..4 {
            pf(j / 16 + c);
        }
        // SAFETY: j + 64 <= n for both rows.
        unsafe {
            let xv: [__m512; 4] = std::array::from_fn(|c| widen(xp.add(j + 16 * c)));
            let ev = exp_base2_group(xv, vm);
            for (c, &v) in ev.iter().enumerate() {
                _mm512_storeu_ps(ep.add(j + 16 * c), v);
                acc = _mm512_add_ps(acc, v);
            }
        }
        j += 64;
    }
    while j + 16 <= n {
        pf(j / 16);
        // SAFETY: j + 16 <= n for both rows.
        unsafe {
            let [v] = exp_base2_group([widen(xp.add(j))], vm);
            _mm512_storeu_ps(ep.add(j), v);
            acc = _mm512_add_ps(acc, v);
        }
        j += 16;
    }
    // SAFETY: `s` holds 16 f32.
    unsafe { _mm512_storeu_ps(s.as_mut_ptr(), acc) };
    for (l, k) in (j..n).enumerate() {
        let ev = exp_shifted_base2(f32::from_bits((x[k] as u32) << 16), m);
        e[k] = ev;
        s[l] += ev;
    }
}

/// bf16 bits of the 16 values `g`, rounded as `cpu::bf16_bits_rne_ftz` rounds
/// (subnormals to a zero of their sign, nearest even, NaN quieted), in the low half
/// of each 32-bit lane.
///
/// # Safety
/// The CPU must have AVX-512 F.
#[inline(always)]
unsafe fn round_bits(g: __m512) -> __m512i {
    let w = _mm512_castps_si512(g);
    let abs = _mm512_and_si512(w, _mm512_set1_epi32(0x7FFF_FFFF));
    let tiny = _mm512_cmplt_epi32_mask(abs, _mm512_set1_epi32(0x0080_0000));
    let w = _mm512_mask_and_epi32(w, tiny, w, _mm512_set1_epi32(0x8000_0000u32 as i32));
    let hi = _mm512_srli_epi32::<16>(w);
    let bias = _mm512_add_epi32(
        _mm512_and_si512(hi, _mm512_set1_epi32(1)),
        _mm512_set1_epi32(0x7FFF),
    );
    let rounded = _mm512_srli_epi32::<16>(_mm512_add_epi32(w, bias));
    let nan = _mm512_or_si512(hi, _mm512_set1_epi32(0x40));
    let is_nan = _mm512_cmpgt_epi32_mask(abs, _mm512_set1_epi32(0x7F80_0000));
    _mm512_mask_blend_epi32(is_nan, rounded, nan)
}

/// Pass C for a block of a bf16 gradient row: dst_j = [`bf16_grad`] of e_j (a·e_j - b
/// in one FMA, minus `hit` at index `t`), as `Elem::stream_grad` defines it. The caller
/// fences.
///
/// # Safety
/// `e` must be as long as `dst`; the CPU must have AVX-512 F, BW and VL.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
pub(super) unsafe fn stream_grad(
    dst: &mut [MaybeUninit<u16>],
    e: &[f32],
    ab: (f32, f32),
    t: Option<usize>,
    hit: f32,
) {
    // SAFETY: this function's target features; the caller's contract.
    unsafe { pass_c(dst, e, ab, t, hit, |g0, g1| round_int(g0, g1)) }
}

/// [`stream_grad`] rounding with `vcvtne2ps2bf16`.
///
/// # Safety
/// As [`stream_grad`], and the CPU must have AVX512-BF16 (`simd::has_avx512bf16`).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16,avx2,fma")]
pub(super) unsafe fn stream_grad_bf16(
    dst: &mut [MaybeUninit<u16>],
    e: &[f32],
    ab: (f32, f32),
    t: Option<usize>,
    hit: f32,
) {
    // SAFETY: this function's target features; the caller's contract.
    unsafe { pass_c(dst, e, ab, t, hit, |g0, g1| round_cvtne(g0, g1)) }
}

/// The body of both pass C variants, with their rounding.
///
/// # Safety
/// As [`stream_grad`]; `round` may use what the caller's target features allow.
#[inline(always)]
unsafe fn pass_c(
    dst: &mut [MaybeUninit<u16>],
    e: &[f32],
    ab: (f32, f32),
    t: Option<usize>,
    hit: f32,
    round: impl Fn(__m512, __m512) -> __m512i,
) {
    let mut pc = PassC::new(dst, e, ab, t, hit, round);
    pc.write_head();
    // SAFETY: the caller's target features.
    unsafe { pc.lines() };
    pc.write_tail();
}

/// 32 gradient values (g0 first) as bf16 bits by `round_bits`.
///
/// # Safety
/// The CPU must have AVX-512 F and BW.
#[inline(always)]
unsafe fn round_int(g0: __m512, g1: __m512) -> __m512i {
    // SAFETY: the caller's contract.
    unsafe {
        _mm512_inserti64x4::<1>(
            _mm512_castsi256_si512(_mm512_cvtepi32_epi16(round_bits(g0))),
            _mm512_cvtepi32_epi16(round_bits(g1)),
        )
    }
}

/// 32 gradient values (g0 first) as bf16 bits by `vcvtne2ps2bf16`, which flushes
/// subnormals to zero as `round_bits` does.
///
/// # Safety
/// The CPU must have AVX512-BF16.
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn round_cvtne(g0: __m512, g1: __m512) -> __m512i {
    // The low 16 values come from the second operand.
    // SAFETY: same-size vector types.
    unsafe { std::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(g1, g0)) }
}

/// Pass C of one gradient row, a cursor over its aligned 64-byte lines: `round(g0, g1)`
/// turns the 32 values of a line into their bf16 bits, in order. Whole lines are
/// streamed; the values before the first and after the last are written one at a
/// time (masked 512-bit stores were slower on Zen 4: BENCHMARKS.md).
struct PassC<'a, R> {
    dst: &'a mut [MaybeUninit<u16>],
    e: &'a [f32],
    ab: (f32, f32),
    t: Option<usize>,
    hit: f32,
    round: R,
    /// The first value on a 64-byte line, and the end of the last whole line.
    head: usize,
    end: usize,
    /// The next whole line's first value.
    j: usize,
}

impl<'a, R: Fn(__m512, __m512) -> __m512i> PassC<'a, R> {
    #[inline(always)]
    fn new(
        dst: &'a mut [MaybeUninit<u16>],
        e: &'a [f32],
        ab: (f32, f32),
        t: Option<usize>,
        hit: f32,
        round: R,
    ) -> Self {
        let n = dst.len();
        assert_eq!(e.len(), n);
        // Values before the first 64-byte boundary (a u16 pointer is even: 0 to 31).
        let head = ((64 - dst.as_ptr() as usize % 64) % 64 / 2).min(n);
        let end = head + (n - head) / 32 * 32;
        Self {
            dst,
            e,
            ab,
            t,
            hit,
            round,
            head,
            end,
            j: head,
        }
    }

    #[inline(always)]
    fn one(&mut self, j: usize) {
        let (a, b) = self.ab;
        let hit = if self.t == Some(j) { self.hit } else { 0.0 };
        self.dst[j].write(bf16_grad(a, self.e[j], b, hit));
    }

    /// The values before the first whole line.
    #[inline(always)]
    fn write_head(&mut self) {
        for j in 0..self.head {
            self.one(j);
        }
    }

    /// The values after the last whole line.
    #[inline(always)]
    fn write_tail(&mut self) {
        for j in self.end..self.dst.len() {
            self.one(j);
        }
    }

    /// The whole lines.
    ///
    /// # Safety
    /// The CPU must have AVX-512 F and BW, and FMA.
    #[inline(always)]
    unsafe fn lines(&mut self) {
        let (a, b) = self.ab;
        let (va, vb, vhit) = (
            _mm512_set1_ps(a),
            _mm512_set1_ps(b),
            _mm512_set1_ps(self.hit),
        );
        let (e, t) = (self.e, self.t);
        let g16 = |j: usize| {
            // SAFETY: j + 16 <= end <= n (below).
            let ev = unsafe { _mm512_loadu_ps(e.as_ptr().add(j)) };
            let g = _mm512_fmsub_ps(va, ev, vb);
            match t {
                Some(t) if t.wrapping_sub(j) < 16 => _mm512_mask_sub_ps(g, 1 << (t - j), g, vhit),
                _ => g,
            }
        };
        let d = self.dst.as_mut_ptr();
        while self.j < self.end {
            let j = self.j;
            let v = (self.round)(g16(j), g16(j + 16));
            // SAFETY: j + 32 <= end <= n; d + j is 64-byte aligned (head brought it
            // there, and j steps by 32 u16 = 64 bytes).
            unsafe { _mm512_stream_si512(d.add(j).cast(), v) };
            self.j += 32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::{bf16_bits_rne_ftz, bf16_to_f32};

    /// Odd lengths, values that hit every path: -inf, the exponential's cut, ties and
    /// both zeros.
    fn row(n: usize, seed: u32) -> Vec<u16> {
        (0..n)
            .map(|i| {
                let k = (i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) >> 7;
                let x = (k % 20_000) as f32 / 100.0 - 150.0;
                half::bf16::from_f32(match k % 97 {
                    0 => f32::NEG_INFINITY,
                    1 => -0.0,
                    2 => 0.0,
                    _ => x,
                })
                .to_bits()
            })
            .collect()
    }

    type PassC = unsafe fn(&mut [MaybeUninit<u16>], &[f32], (f32, f32), Option<usize>, f32);

    /// Pass C's integer rounding, and `vcvtne2ps2bf16`'s where the CPU has it.
    fn pass_cs() -> Vec<PassC> {
        let mut v: Vec<PassC> = vec![stream_grad];
        if crate::cpu::simd::has_avx512bf16() {
            v.push(stream_grad_bf16);
        }
        v
    }

    /// The passes give the generic loops' bits: the max (a NaN skipped), every
    /// exponential and lane sum, and pass C at four alignments of the gradient, the
    /// target first, inside, last or absent, with either rounding; NaN, subnormal and
    /// zero gradients keep what `bf16_bits_rne_ftz` makes of them.
    #[test]
    fn the_three_passes_give_the_generic_loops_bits() {
        if crate::cpu::simd::detected() != crate::cpu::simd::Level::Avx512 {
            println!("no AVX-512 on this CPU: nothing to compare");
            return;
        }
        for n in (1..=130).chain([1000, 1024, 1023 + 64]) {
            let x = row(n, n as u32);
            let xf: Vec<f32> = x.iter().map(|&h| bf16_to_f32(h)).collect();
            let want_m = xf
                .iter()
                .fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m });
            // SAFETY: `detected` reports AVX-512 (F, BW, VL, FMA) only when the CPU has it.
            let m = unsafe { row_max(&x) };
            assert_eq!(m, want_m, "max, n = {n}");
            let mut e = vec![0f32; n];
            let mut s = [0.5f32; 16];
            let prefetched = std::cell::Cell::new(0);
            // SAFETY: as above; e is as long as x.
            unsafe {
                exp_block(&x, m, &mut e, &mut s, |_| {
                    prefetched.set(prefetched.get() + 1)
                })
            };
            let mut want_s = [0.5f32; 16];
            for (k, (&v, &ev)) in xf.iter().zip(&e).enumerate() {
                let w = exp_shifted_base2(v, m);
                assert_eq!(ev.to_bits(), w.to_bits(), "e[{k}], n = {n}");
                want_s[k % 16] += w;
            }
            assert_eq!(
                s.map(f32::to_bits),
                want_s.map(f32::to_bits),
                "sums, n = {n}"
            );
            assert_eq!(prefetched.get(), n / 16, "one prefetch per whole chunk");
            // Every alignment of dst within a line, the target anywhere or nowhere.
            let mut store = vec![0u16; n + 64];
            for off in [0, 1, 7, 31] {
                let at = (store.as_ptr().align_offset(64) + off) % 32;
                for t in [None, Some(0), Some(n / 2), Some(n - 1)] {
                    // b = 0 and a tiny a make the smallest values subnormal.
                    for (a, b, hit) in [(0.37f32, 1e-3f32, 0.9f32), (1e-8, 0.0, 0.5)] {
                        for pass_c in pass_cs() {
                            // A value bf16_grad never gives (a signalling NaN's bits).
                            store.fill(0x7FBF);
                            let dst = crate::cpu::as_uninit(&mut store[at..at + n]);
                            // SAFETY: as above (pass_cs checks its own); e is as long
                            // as dst.
                            unsafe { pass_c(dst, &e, (a, b), t, hit) };
                            for (j, &got) in store[at..at + n].iter().enumerate() {
                                let h = if t == Some(j) { hit } else { 0.0 };
                                let want = bf16_grad(a, e[j], b, h);
                                assert_eq!(got, want, "g[{j}], n = {n}, offset {at}, t {t:?}");
                            }
                        }
                    }
                }
            }
        }
        // A NaN is skipped by the max, as by the generic loop.
        let mut x = row(77, 5);
        x[40] = 0x7FC0;
        let want = x
            .iter()
            .map(|&h| bf16_to_f32(h))
            .fold(f32::NEG_INFINITY, |m, v| if v > m { v } else { m });
        // SAFETY: as above.
        assert_eq!(unsafe { row_max(&x) }, want, "max with a NaN");
        // NaN gradients (from a NaN upstream scale) round as half does; subnormals
        // and zeros keep their sign.
        let special = [
            0x7FC1_0000u32,
            0x7F81_0000,
            0xFFC0_0000,
            0x7F80_0000,
            0x0000_0001,
            0x807F_FFFF,
            0x0040_0000,
            0x8000_0000,
            0x0080_0000,
        ];
        let g: Vec<f32> = special
            .iter()
            .map(|&w| f32::from_bits(w))
            .chain([1.0; 60])
            .collect();
        for pass_c in pass_cs() {
            let mut out = vec![0x7FBFu16; g.len()];
            // SAFETY: as above.
            unsafe { pass_c(crate::cpu::as_uninit(&mut out), &g, (1.0, 0.0), None, 0.0) };
            for (j, (&o, &x)) in out.iter().zip(&g).enumerate() {
                assert_eq!(
                    o,
                    bf16_bits_rne_ftz(x),
                    "pattern {j}: {:#010x}",
                    x.to_bits()
                );
            }
        }
    }
}
