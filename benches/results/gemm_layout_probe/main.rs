use rayon::prelude::*;
use std::time::Instant;

const MR: usize = 6;
const NR: usize = 16;
const KC: usize = 256;
const MC: usize = 144;
const NC: usize = 3072;

#[derive(Clone, Copy)]
struct Mat { p: *const f32, rs: usize, cs: usize }
unsafe impl Send for Mat {}
unsafe impl Sync for Mat {}
#[derive(Clone, Copy)]
struct Dst(*mut f32);
unsafe impl Send for Dst {}
unsafe impl Sync for Dst {}

/// Packs rows i0..i0+mc, cols p0..p0+kc of A into MR-row panels, k-major, zero-padded.
#[inline(always)]
fn pack_a(a: Mat, i0: usize, mc: usize, p0: usize, kc: usize, out: &mut [f32]) {
    for (pi, panel) in out.chunks_mut(MR * kc).take(mc.div_ceil(MR)).enumerate() {
        let r0 = pi * MR;
        let rows = MR.min(mc - r0);
        if a.cs == 1 {
            for r in 0..MR {
                if r < rows {
                    let src = unsafe { std::slice::from_raw_parts(a.p.add((i0 + r0 + r) * a.rs + p0), kc) };
                    for (kk, &v) in src.iter().enumerate() { panel[kk * MR + r] = v; }
                } else {
                    for kk in 0..kc { panel[kk * MR + r] = 0.0; }
                }
            }
        } else {
            for kk in 0..kc {
                for r in 0..MR {
                    panel[kk * MR + r] = if r < rows { unsafe { *a.p.add((i0 + r0 + r) * a.rs + (p0 + kk) * a.cs) } } else { 0.0 };
                }
            }
        }
    }
}

/// Packs rows p0..p0+kc, cols j0..j0+nc of B into NR-col panels, k-major, zero-padded.
#[inline(always)]
fn pack_b(b: Mat, p0: usize, kc: usize, j0: usize, nc: usize, out: &mut [f32]) {
    for (pj, panel) in out.chunks_mut(NR * kc).take(nc.div_ceil(NR)).enumerate() {
        let c0 = pj * NR;
        let cols = NR.min(nc - c0);
        if b.cs == 1 {
            for kk in 0..kc {
                let src = unsafe { b.p.add((p0 + kk) * b.rs + j0 + c0) };
                for c in 0..NR {
                    panel[kk * NR + c] = if c < cols { unsafe { *src.add(c) } } else { 0.0 };
                }
            }
        } else {
            for c in 0..NR {
                if c < cols {
                    let src = unsafe { std::slice::from_raw_parts(b.p.add((j0 + c0 + c) * b.cs + p0 * b.rs), (kc - 1) * b.rs + 1) };
                    for kk in 0..kc { panel[kk * NR + c] = src[kk * b.rs]; }
                } else {
                    for kk in 0..kc { panel[kk * NR + c] = 0.0; }
                }
            }
        }
    }
}

#[inline(always)]
fn micro(kc: usize, pa: &[f32], pb: &[f32], acc: &mut [[f32; NR]; MR]) {
    let mut c = [[0f32; NR]; MR];
    for kk in 0..kc {
        let b: &[f32; NR] = pb[kk * NR..kk * NR + NR].try_into().unwrap();
        let a: &[f32; MR] = pa[kk * MR..kk * MR + MR].try_into().unwrap();
        for r in 0..MR {
            for l in 0..NR {
                c[r][l] = a[r].mul_add(b[l], c[r][l]);
            }
        }
    }
    *acc = c;
}

#[target_feature(enable = "avx2,fma")]
unsafe fn micro_avx2(kc: usize, pa: &[f32], pb: &[f32], acc: &mut [[f32; NR]; MR]) { micro(kc, pa, pb, acc) }

/// Writes a tile into C (rows, cols valid), adding when `add`.
#[inline(always)]
fn store(c: Dst, ldc: usize, i: usize, j: usize, rows: usize, cols: usize, t: &[[f32; NR]; MR], add: bool) {
    for r in 0..rows {
        let row = unsafe { std::slice::from_raw_parts_mut(c.0.add((i + r) * ldc + j), cols) };
        if add { for l in 0..cols { row[l] += t[r][l]; } } else { row.copy_from_slice(&t[r][..cols]); }
    }
}

#[target_feature(enable = "avx2,fma")]
unsafe fn block_avx2(mc: usize, nc: usize, kc: usize, pa: &[f32], pb: &[f32], c: Dst, ldc: usize, i0: usize, j0: usize, add: bool) {
    let mut t = [[0f32; NR]; MR];
    for jr in (0..nc).step_by(NR) {
        let pbp = &pb[(jr / NR) * NR * kc..][..NR * kc];
        for ir in (0..mc).step_by(MR) {
            let pap = &pa[(ir / MR) * MR * kc..][..MR * kc];
            micro(kc, pap, pbp, &mut t);
            store(c, ldc, i0 + ir, j0 + jr, MR.min(mc - ir), NR.min(nc - jr), &t, add);
        }
    }
}

pub fn sgemm(m: usize, n: usize, k: usize, c: &mut [f32], acc: bool, a: Mat, b: Mat, threads: usize) {
    let c = Dst(c.as_mut_ptr());
    let mut pb = vec![0f32; KC * NC.min(n.div_ceil(NR) * NR)];
    let mc_blk = MC.min((m.div_ceil(threads).div_ceil(MR) * MR).max(MR));
    for j0 in (0..n).step_by(NC) {
        let nc = NC.min(n - j0);
        for p0 in (0..k).step_by(KC) {
            let kc = KC.min(k - p0);
            let add = acc || p0 > 0;
            // pack B in parallel panels
            let npan = nc.div_ceil(NR);
            pb[..npan * NR * kc].par_chunks_mut(NR * kc).enumerate().for_each(|(pj, out)| {
                pack_b(b, p0, kc, j0 + pj * NR, NR.min(nc - pj * NR), out);
            });
            let pb = &pb[..];
            let nblk = m.div_ceil(mc_blk);
            (0..nblk).into_par_iter().for_each_init(|| vec![0f32; MC * KC], |pa, bi| {
                let i0 = bi * mc_blk;
                let mc = mc_blk.min(m - i0);
                pack_a(a, i0, mc, p0, kc, pa);
                unsafe { block_avx2(mc, nc, kc, pa, pb, c, n, i0, j0, add) };
            });
        }
    }
}

fn reference(m: usize, n: usize, k: usize, a: Mat, b: Mat, c0: &[f32], acc: bool) -> Vec<f64> {
    let mut out = vec![0f64; m * n];
    for i in 0..m { for j in 0..n {
        let mut s = if acc { c0[i * n + j] as f64 } else { 0.0 };
        for p in 0..k { s += unsafe { *a.p.add(i * a.rs + p * a.cs) as f64 * *b.p.add(p * b.rs + j * b.cs) as f64 }; }
        out[i * n + j] = s;
    }}
    out
}

fn strides(layout: &str, m: usize, n: usize, k: usize) -> (usize, usize, usize, usize, bool) {
    match layout { "nt" => (k, 1, 1, k, true), "nn" => (k, 1, n, 1, false), "tn" => (1, m, n, 1, true), _ => panic!() }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let reps: usize = args.get(1).map(|s| s.parse().unwrap()).unwrap_or(5);
    let th = rayon::current_num_threads();
    // correctness on odd shapes
    for &(l, m, n, k) in &[("nt", 7, 19, 300), ("nn", 13, 33, 5), ("tn", 150, 17, 513), ("nn", 1, 1, 1), ("nt", 290, 3100, 70)] {
        let (ars, acs, brs, bcs, acc) = strides(l, m, n, k);
        let av: Vec<f32> = (0..m * k).map(|i| ((i * 7919 % 1000) as f32 / 500.0) - 1.0).collect();
        let bv: Vec<f32> = (0..k * n).map(|i| ((i * 104729 % 997) as f32 / 498.0) - 1.0).collect();
        let c0: Vec<f32> = (0..m * n).map(|i| (i % 13) as f32 * 0.1).collect();
        let a = Mat { p: av.as_ptr(), rs: ars, cs: acs };
        let b = Mat { p: bv.as_ptr(), rs: brs, cs: bcs };
        let mut c = c0.clone();
        sgemm(m, n, k, &mut c, acc, a, b, th);
        let r = reference(m, n, k, a, b, &c0, acc);
        let err = c.iter().zip(&r).map(|(&x, &y)| (x as f64 - y).abs()).fold(0.0, f64::max);
        println!("check {l} {m}x{n}x{k}: max err {err:.2e}");
        assert!(err < 1e-3);
    }
    let shapes = [(2048usize, 2304usize, 768usize), (2048, 768, 768), (2048, 3072, 768), (2048, 768, 3072), (4096, 768, 256), (4096, 256, 256), (4096, 1024, 256), (4096, 256, 1024), (4096, 1536, 512), (4096, 512, 2048)];
    for round in 0..3 {
    for &(m, n, k) in &shapes {
        let x = vec![0.5f32; m * k];
        let w = vec![0.25f32; n * k];
        let mut c = vec![0.0f32; m * n];
        let mut best = [f64::INFINITY; 3];
        for _ in 0..reps + 1 {
            for which in 0..3 {
                let t = Instant::now();
                unsafe { match which {
                    0 => gemm::gemm(m, n, k, c.as_mut_ptr(), 1, n as isize, true, x.as_ptr(), 1, k as isize,
                        w.as_ptr(), k as isize, 1, 1.0, 1.0, false, false, false, gemm::Parallelism::Rayon(th)),
                    1 => gemm::gemm(m, n, k, c.as_mut_ptr(), 1, n as isize, true, x.as_ptr(), 1, k as isize,
                        w.as_ptr(), 1, n as isize, 1.0, 1.0, false, false, false, gemm::Parallelism::Rayon(th)),
                    _ => { // transpose then nn
                        let mut wt = vec![0f32; n*k];
                        for j in 0..n { for p in 0..k { *wt.get_unchecked_mut(p*n+j) = *w.get_unchecked(j*k+p); } }
                        gemm::gemm(m, n, k, c.as_mut_ptr(), 1, n as isize, true, x.as_ptr(), 1, k as isize,
                        wt.as_ptr(), 1, n as isize, 1.0, 1.0, false, false, false, gemm::Parallelism::Rayon(th))
                    }
                }}
                best[which] = best[which].min(t.elapsed().as_secs_f64());
            }
        }
        let f = 2.0 * (m * n * k) as f64 / 1e9;
        println!("r{round} {m} {n} {k}  nt {:.1}  nn {:.1}  T+nn {:.1}  nn/nt {:.2}", f / best[0], f / best[1], f/best[2], best[0] / best[1]);
    }}
}
