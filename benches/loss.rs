//! criterion benchmarks of the loss kernels: fused vs composed reference, CE forward and
//! forward+backward at the shapes of `tinylm bench loss` (the two smaller ones, so that a
//! criterion run stays short; the CLI covers all), and the fused linear CE at a reduced
//! size. Run with `cargo bench --bench loss`.

use candle_core::{Device, Tensor, Var};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tinylm::loss::{self, reference, CrossEntropyOptions};

#[global_allocator]
static A: tinylm::bench::alloc::CountingAlloc = tinylm::bench::alloc::CountingAlloc;

fn inputs(n: usize, v: usize) -> (Tensor, Tensor) {
    let x = Tensor::randn(0f32, 2f32, (n, v), &Device::Cpu).unwrap();
    let t: Vec<u32> = (0..n).map(|i| ((i * 7919) % v) as u32).collect();
    (x, Tensor::from_vec(t, n, &Device::Cpu).unwrap())
}

fn ce(c: &mut Criterion) {
    let o = CrossEntropyOptions::default();
    for (n, v) in [(16384usize, 256usize), (8192, 8192)] {
        let (x, t) = inputs(n, v);
        let var = Var::from_tensor(&x).unwrap();
        let mut g = c.benchmark_group(format!("ce_{n}x{v}"));
        g.sample_size(10).throughput(Throughput::Elements(n as u64));
        g.bench_function("fwd/fused", |b| {
            b.iter(|| loss::cross_entropy(&x, &t, &o).unwrap())
        });
        g.bench_function("fwd/reference", |b| {
            b.iter(|| reference::cross_entropy(&x, &t, &o).unwrap())
        });
        g.bench_function("fwdbwd/fused", |b| {
            b.iter(|| loss::cross_entropy_loss_and_grad(&x, &t, &o).unwrap())
        });
        g.bench_function("fwdbwd/fused_autograd", |b| {
            b.iter(|| {
                loss::cross_entropy(var.as_tensor(), &t, &o)
                    .unwrap()
                    .backward()
                    .unwrap()
            })
        });
        g.bench_function("fwdbwd/reference", |b| {
            b.iter(|| {
                reference::cross_entropy(var.as_tensor(), &t, &o)
                    .unwrap()
                    .backward()
                    .unwrap()
            })
        });
        g.finish();
    }
}

fn linear(c: &mut Criterion) {
    let (n, v, d) = (1024, 8192, 256);
    let h = Var::from_tensor(&Tensor::randn(0f32, 1f32, (n, d), &Device::Cpu).unwrap()).unwrap();
    let w = Var::from_tensor(
        &Tensor::randn(0f32, (d as f32).powf(-0.5), (v, d), &Device::Cpu).unwrap(),
    )
    .unwrap();
    let t = Tensor::from_vec(
        (0..n).map(|i| ((i * 31) % v) as u32).collect::<Vec<_>>(),
        n,
        &Device::Cpu,
    )
    .unwrap();
    let o = CrossEntropyOptions::default();
    let mut g = c.benchmark_group(format!("linear_ce_fwdbwd_{n}x{v}_d{d}"));
    g.sample_size(10).throughput(Throughput::Elements(n as u64));
    g.bench_function("fused", |b| {
        b.iter(|| {
            loss::linear_cross_entropy(h.as_tensor(), w.as_tensor(), &t, &o)
                .unwrap()
                .backward()
                .unwrap()
        })
    });
    g.bench_function("reference", |b| {
        b.iter(|| {
            reference::linear_cross_entropy(h.as_tensor(), w.as_tensor(), &t, &o)
                .unwrap()
                .backward()
                .unwrap()
        })
    });
    g.finish();
}

criterion_group!(benches, ce, linear);
criterion_main!(benches);
