// The exponential alone over one 8192-element row (in L1), ns per element, best of 7 x 200 calls.
// Build: a crate with this as src/main.rs (no dependencies; [profile.release] codegen-units = 1),
// `cargo build --release`, run at nice -15. Each variant is checked to give the same bits first.
use std::arch::x86_64::*;
use std::time::Instant;
const EXP_LOG2E: f32 = std::f32::consts::LOG2_E;
const EXP_LN2_HI: f32 = 0.693_359_4;
const EXP_LN2_LO: f32 = -2.121_944_4e-4;
const EXP_MAGIC: f32 = 12_582_912.0;
const EXP_POLY: [f32; 6] = [1.987_569_1e-4, 1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 1.666_666_5e-1, 0.5];
#[inline(always)]
fn exp_core(x: f32) -> f32 {
    let t = x.mul_add(EXP_LOG2E, EXP_MAGIC);
    let k = t - EXP_MAGIC;
    let ki = t.to_bits().wrapping_sub(EXP_MAGIC.to_bits()) as i32;
    let r = (-k).mul_add(EXP_LN2_LO, (-k).mul_add(EXP_LN2_HI, x));
    let mut p = EXP_POLY[0];
    for &c in &EXP_POLY[1..] { p = p.mul_add(r, c); }
    let er = (p * r).mul_add(r, r) + 1.0;
    let scale = f32::from_bits((ki.wrapping_add(127) as u32) << 23);
    er * scale
}
#[inline(always)]
fn exp_nonpos(x: f32) -> f32 { let y = exp_core(x); if x < -87.0 { 0.0 } else { y } }

const L: usize = 16;
// current: write e, then sum
#[target_feature(enable = "avx2,fma")]
unsafe fn v0(x: &[f32], m: f32, e: &mut [f32]) -> f32 {
    let mut s = [0f32; L];
    for (xc, ec) in x.chunks_exact(L).zip(e.chunks_exact_mut(L)) {
        for l in 0..L { ec[l] = exp_nonpos(xc[l] - m); }
    }
    for ec in e.chunks_exact(L) { for l in 0..L { s[l] += ec[l]; } }
    s.iter().sum()
}
// generic, step by step over W lanes
#[inline(always)]
fn exp_group<const W: usize>(x: [f32; W]) -> [f32; W] {
    let mut t = [0f32; W]; for l in 0..W { t[l] = x[l].mul_add(EXP_LOG2E, EXP_MAGIC); }
    let mut k = [0f32; W]; for l in 0..W { k[l] = t[l] - EXP_MAGIC; }
    let mut r = [0f32; W]; for l in 0..W { r[l] = (-k[l]).mul_add(EXP_LN2_HI, x[l]); }
    for l in 0..W { r[l] = (-k[l]).mul_add(EXP_LN2_LO, r[l]); }
    let mut p = [EXP_POLY[0]; W];
    for &c in &EXP_POLY[1..] { for l in 0..W { p[l] = p[l].mul_add(r[l], c); } }
    for l in 0..W { p[l] = (p[l] * r[l]).mul_add(r[l], r[l]) + 1.0; }
    let mut y = [0f32; W];
    for l in 0..W {
        let ki = t[l].to_bits().wrapping_sub(EXP_MAGIC.to_bits()) as i32;
        let v = p[l] * f32::from_bits((ki.wrapping_add(127) as u32) << 23);
        y[l] = if x[l] < -87.0 { 0.0 } else { v };
    }
    y
}
#[target_feature(enable = "avx2,fma")]
unsafe fn v1<const W: usize>(x: &[f32], m: f32, e: &mut [f32]) -> f32 {
    for (xc, ec) in x.chunks_exact(W).zip(e.chunks_exact_mut(W)) {
        let mut d = [0f32; W];
        for l in 0..W { d[l] = xc[l] - m; }
        ec.copy_from_slice(&exp_group::<W>(d));
    }
    let mut s = [0f32; L];
    for ec in e.chunks_exact(L) { for l in 0..L { s[l] += ec[l]; } }
    s.iter().sum()
}
#[inline(always)]
unsafe fn exp8<const G: usize>(x: [__m256; G]) -> [__m256; G] {
    let magic = _mm256_set1_ps(EXP_MAGIC);
    let mut t = x;
    for j in 0..G { t[j] = _mm256_fmadd_ps(x[j], _mm256_set1_ps(EXP_LOG2E), magic); }
    let mut k = t;
    for j in 0..G { k[j] = _mm256_sub_ps(t[j], magic); }
    let mut r = x;
    for j in 0..G { r[j] = _mm256_fnmadd_ps(k[j], _mm256_set1_ps(EXP_LN2_HI), x[j]); }
    for j in 0..G { r[j] = _mm256_fnmadd_ps(k[j], _mm256_set1_ps(EXP_LN2_LO), r[j]); }
    let mut p = [_mm256_set1_ps(EXP_POLY[0]); G];
    for &c in &EXP_POLY[1..] { for j in 0..G { p[j] = _mm256_fmadd_ps(p[j], r[j], _mm256_set1_ps(c)); } }
    for j in 0..G { p[j] = _mm256_mul_ps(p[j], r[j]); }
    for j in 0..G { p[j] = _mm256_add_ps(_mm256_fmadd_ps(p[j], r[j], r[j]), _mm256_set1_ps(1.0)); }
    let mut y = x;
    for j in 0..G {
        let ki = _mm256_sub_epi32(_mm256_castps_si256(t[j]), _mm256_set1_epi32(EXP_MAGIC.to_bits() as i32));
        let scale = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(ki, _mm256_set1_epi32(127)), 23));
        let v = _mm256_mul_ps(p[j], scale);
        let below = _mm256_cmp_ps(x[j], _mm256_set1_ps(-87.0), _CMP_LT_OQ);
        y[j] = _mm256_andnot_ps(below, v);
    }
    y
}
#[target_feature(enable = "avx2,fma")]
unsafe fn v2<const G: usize>(x: &[f32], m: f32, e: &mut [f32]) -> f32 {
    let mv = _mm256_set1_ps(m);
    let w = 8 * G;
    let n = x.len() / w * w;
    let mut i = 0;
    while i < n {
        let mut d = [_mm256_setzero_ps(); G];
        for j in 0..G { d[j] = _mm256_sub_ps(_mm256_loadu_ps(x.as_ptr().add(i + 8 * j)), mv); }
        let y = exp8::<G>(d);
        for j in 0..G { _mm256_storeu_ps(e.as_mut_ptr().add(i + 8 * j), y[j]); }
        i += w;
    }
    let mut s = [0f32; L];
    for ec in e.chunks_exact(L) { for l in 0..L { s[l] += ec[l]; } }
    s.iter().sum()
}
// fused exp + sum in intrinsics
#[target_feature(enable = "avx2,fma")]
unsafe fn v3<const G: usize>(x: &[f32], m: f32, e: &mut [f32]) -> f32 {
    let mv = _mm256_set1_ps(m);
    let w = 8 * G;
    let n = x.len() / w * w;
    let mut s0 = _mm256_setzero_ps(); let mut s1 = _mm256_setzero_ps();
    let mut i = 0;
    while i < n {
        let mut d = [_mm256_setzero_ps(); G];
        for j in 0..G { d[j] = _mm256_sub_ps(_mm256_loadu_ps(x.as_ptr().add(i + 8 * j)), mv); }
        let y = exp8::<G>(d);
        for j in 0..G { _mm256_storeu_ps(e.as_mut_ptr().add(i + 8 * j), y[j]); if j % 2 == 0 { s0 = _mm256_add_ps(s0, y[j]) } else { s1 = _mm256_add_ps(s1, y[j]) } }
        i += w;
    }
    let mut a = [0f32; 16];
    _mm256_storeu_ps(a.as_mut_ptr(), s0); _mm256_storeu_ps(a.as_mut_ptr().add(8), s1);
    a.iter().sum()
}
#[target_feature(enable = "avx2,fma")]
unsafe fn vmax(x: &[f32]) -> f32 {
    let mut mx = [f32::NEG_INFINITY; L];
    for c in x.chunks_exact(L) { for l in 0..L { mx[l] = if c[l] > mx[l] { c[l] } else { mx[l] }; } }
    mx.iter().cloned().fold(f32::NEG_INFINITY, f32::max)
}

fn bench(name: &str, f: &dyn Fn() -> f32, n: usize) {
    let mut best = f64::MAX; let mut acc = 0.0;
    for _ in 0..7 {
        let t = Instant::now();
        for _ in 0..200 { acc += f(); }
        best = best.min(t.elapsed().as_secs_f64() / 200.0);
    }
    println!("{name:12} {:.3} ns/elem  ({:.2} cycles @3GHz)  {}", best * 1e9 / n as f64, best * 3e9 / n as f64, acc > 0.0);
}
fn main() {
    let n = 8192;
    let x: Vec<f32> = (0..n).map(|i| ((i * 2654435761usize % 1000) as f32) / 100.0 - 5.0).collect();
    let m = 5.0f32;
    let mut e = vec![0f32; n];
    let mut e2 = vec![0f32; n];
    unsafe {
        v0(&x, m, &mut e); v2::<4>(&x, m, &mut e2);
        assert!(e.iter().zip(&e2).all(|(a, b)| a.to_bits() == b.to_bits()));
        v1::<32>(&x, m, &mut e2);
        assert!(e.iter().zip(&e2).all(|(a, b)| a.to_bits() == b.to_bits()));
    }
    let ec = std::cell::RefCell::new(e);
    bench("max", &|| unsafe { vmax(&x) }, n);
    bench("v0 cur", &|| unsafe { v0(&x, m, &mut ec.borrow_mut()) }, n);
    bench("v1 W32", &|| unsafe { v1::<32>(&x, m, &mut ec.borrow_mut()) }, n);
    bench("v1 W64", &|| unsafe { v1::<64>(&x, m, &mut ec.borrow_mut()) }, n);
    bench("v2 G1", &|| unsafe { v2::<1>(&x, m, &mut ec.borrow_mut()) }, n);
    bench("v2 G2", &|| unsafe { v2::<2>(&x, m, &mut ec.borrow_mut()) }, n);
    bench("v2 G3", &|| unsafe { v2::<3>(&x, m, &mut ec.borrow_mut()) }, n);
    bench("v2 G4", &|| unsafe { v2::<4>(&x, m, &mut ec.borrow_mut()) }, n);
    bench("v3 G2", &|| unsafe { v3::<2>(&x, m, &mut ec.borrow_mut()) }, n);
    bench("v3 G4", &|| unsafe { v3::<4>(&x, m, &mut ec.borrow_mut()) }, n);
}
