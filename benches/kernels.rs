//! Criterion benches of the layer kernels at the reference GPT's shapes (N = 16·256
//! rows, C = 256, 4·C = 1024): fused vs composed reference, forward + backward; and
//! Muon's Newton–Schulz orthogonalisation of the default's matrices, with symmetric
//! products in blocks against whole products.
//! Interleaved A/B medians for BENCHMARKS.md come from `examples/bench_kernels.rs`.

use candle_core::{Device, Tensor, Var};
use criterion::{criterion_group, criterion_main, Criterion};
use tinylm::kernels::{self, reference};

type Ln = fn(&Tensor, &Tensor, &Tensor, f64) -> candle_core::Result<Tensor>;
type Act = fn(&Tensor) -> candle_core::Result<Tensor>;

fn randn(shape: &[usize]) -> Tensor {
    Tensor::randn(0f32, 1.0, shape, &Device::Cpu).unwrap()
}

fn layer_norm(c: &mut Criterion) {
    let (n, ch) = (16 * 256, 256);
    let x = Var::from_tensor(&randn(&[n, ch])).unwrap();
    let g = Var::from_tensor(&randn(&[ch])).unwrap();
    let b = Var::from_tensor(&randn(&[ch])).unwrap();
    let w = randn(&[n, ch]);
    let mut group = c.benchmark_group("layer_norm_fwd_bwd_4096x256");
    for (name, f) in [
        ("reference", reference::layer_norm as Ln),
        ("fused", kernels::layer_norm),
    ] {
        group.bench_function(name, |bench| {
            bench.iter(|| {
                let y = f(x.as_tensor(), g.as_tensor(), b.as_tensor(), 1e-5).unwrap();
                (y * &w).unwrap().sum_all().unwrap().backward().unwrap()
            })
        });
    }
    group.finish();
}

fn gelu(c: &mut Criterion) {
    let h = Var::from_tensor(&randn(&[16 * 256, 1024])).unwrap();
    let w = randn(&[16 * 256, 1024]);
    let mut group = c.benchmark_group("gelu_fwd_bwd_4096x1024");
    for (name, f) in [
        ("reference", reference::gelu as Act),
        ("fused", kernels::gelu),
    ] {
        group.bench_function(name, |bench| {
            bench.iter(|| {
                let y = f(h.as_tensor()).unwrap();
                (y * &w).unwrap().sum_all().unwrap().backward().unwrap()
            })
        });
    }
    group.finish();
}

/// One matrix's Newton–Schulz on one thread (the trainer runs one matrix per thread):
/// the default's (3C, C), (C, C) and (4C, C) matrices, C = 256.
fn muon(c: &mut Criterion) {
    use tinylm::train::muon::{orthogonalize_in_blocks, SYM_BLOCK};
    for (rows, cols) in [(768, 256), (256, 256), (1024, 256)] {
        let x0: Vec<f32> = randn(&[rows * cols]).to_vec1().unwrap();
        let mut group = c.benchmark_group(format!("muon_orthogonalize_{rows}x{cols}"));
        for (name, h) in [("whole_products", usize::MAX), ("blocks", SYM_BLOCK)] {
            group.bench_function(name, |bench| {
                bench.iter(|| {
                    let mut x = x0.clone();
                    orthogonalize_in_blocks(&mut x, rows, cols, h);
                    x
                })
            });
        }
        group.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = layer_norm, gelu, muon
}
criterion_main!(benches);
