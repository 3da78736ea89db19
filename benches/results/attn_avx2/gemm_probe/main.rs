use std::time::Instant;
// layout: "nt" dst=x[m,k]·w[n,k]^T ; "nn" dst=dy[m,k]·w[k,n]; "tn" dst += dy[k,m]^T · x[k,n]
fn run(layout: &str, m: usize, n: usize, k: usize, reps: usize) -> f64 {
    let a = vec![0.5f32; m * k];
    let b = vec![0.25f32; k * n];
    let mut c = vec![0.0f32; m * n];
    if layout == "tn2" {
        // C[m,n] (row-major) computed as C^T[n,m] = x^T[n,k] . dy[k,m]: C^T has rs 1, cs n.
        let x = vec![0.25f32; k * n];
        let dy = vec![0.5f32; k * m];
        let th = rayon::current_num_threads();
        let mut best = f64::INFINITY;
        for _ in 0..reps + 1 {
            let t = Instant::now();
            unsafe {
                gemm::gemm(n, m, k, c.as_mut_ptr(), n as isize, 1, true, x.as_ptr(), n as isize, 1,
                    dy.as_ptr(), 1, m as isize, 1.0, 1.0, false, false, false, gemm::Parallelism::Rayon(th));
            }
            best = best.min(t.elapsed().as_secs_f64());
        }
        return 2.0 * (m * n * k) as f64 / best / 1e9;
    }
    let (a_rs, a_cs, b_rs, b_cs, acc) = match layout {
        "nt" => (k, 1, 1, k, true),
        "nn" => (k, 1, n, 1, false),
        "tn" => (1, m, n, 1, true),
        _ => panic!(),
    };
    let th = rayon::current_num_threads();
    let mut best = f64::INFINITY;
    for _ in 0..reps + 1 {
        let t = Instant::now();
        unsafe {
            gemm::gemm(m, n, k, c.as_mut_ptr(), 1, n as isize, acc, a.as_ptr(), a_cs as isize, a_rs as isize,
                b.as_ptr(), b_cs as isize, b_rs as isize, 1.0, 1.0, false, false, false, gemm::Parallelism::Rayon(th));
        }
        best = best.min(t.elapsed().as_secs_f64());
    }
    2.0 * (m * n * k) as f64 / best / 1e9
}
fn main() {
    let args: Vec<String> = std::env::args().collect();
    let reps: usize = args.get(1).map(|s| s.parse().unwrap()).unwrap_or(5);
    let shapes: Vec<(&str, usize, usize, usize)> = vec![
        ("nt", 2048, 2304, 768), ("nt", 2048, 768, 768), ("nt", 2048, 3072, 768), ("nt", 2048, 768, 3072),
        ("nn", 2048, 768, 2304), ("nn", 2048, 768, 768), ("nn", 2048, 768, 3072), ("nn", 2048, 3072, 768),
        ("tn", 2304, 768, 2048), ("tn", 768, 768, 2048), ("tn", 3072, 768, 2048), ("tn", 768, 3072, 2048),
        ("tn2", 2304, 768, 2048), ("tn2", 768, 768, 2048), ("tn2", 3072, 768, 2048), ("tn2", 768, 3072, 2048),
        ("nn", 1024, 1024, 1024),
    ];
    for (l, m, n, k) in shapes {
        println!("{l} {m} {n} {k} {:.1}", run(l, m, n, k, reps));
    }
}
