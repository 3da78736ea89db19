//! criterion: fused vs composed reference causal attention, forward and forward+backward,
//! at the two shapes of `../shared/bench/torch_reference.py`.
//! `RAYON_NUM_THREADS=2 cargo bench --bench attention`

use candle_core::{Device, Tensor, Var};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use tinylm::attention::{causal_attention, reference};

#[global_allocator]
static A: tinylm::bench::alloc::CountingAlloc = tinylm::bench::alloc::CountingAlloc;

type Attn = fn(&Tensor, &Tensor, &Tensor) -> candle_core::Result<Tensor>;

fn bench(c: &mut Criterion) {
    let dev = Device::Cpu;
    for (b, h, t, d) in [(8, 8, 256, 64), (2, 8, 1024, 64)] {
        let shape = (b, h, t, d);
        let q = Var::from_tensor(&Tensor::randn(0f32, 1., shape, &dev).unwrap()).unwrap();
        let k = Var::from_tensor(&Tensor::randn(0f32, 1., shape, &dev).unwrap()).unwrap();
        let v = Var::from_tensor(&Tensor::randn(0f32, 1., shape, &dev).unwrap()).unwrap();
        let g = Tensor::randn(0f32, 1., shape, &dev).unwrap();
        let (qd, kd, vd) = (
            q.as_tensor().detach(),
            k.as_tensor().detach(),
            v.as_tensor().detach(),
        );
        // FlashAttention FLOPs: causal forward 2·B·H·T²·D, backward 2.5x that.
        let fwd_flops = 2 * (b * h * t * t * d) as u64;
        let name = format!("{b}x{h}x{t}x{d}");
        let imps: [(&str, Attn); 2] = [
            ("fused", causal_attention),
            ("reference", reference::causal_attention),
        ];
        let mut group = c.benchmark_group("attn_fwd");
        group
            .sample_size(10)
            .throughput(Throughput::Elements(fwd_flops));
        for (imp, f) in imps {
            group.bench_function(BenchmarkId::new(imp, &name), |bch| {
                bch.iter(|| f(&qd, &kd, &vd).unwrap())
            });
        }
        group.finish();
        let mut group = c.benchmark_group("attn_fwdbwd");
        group
            .sample_size(10)
            .throughput(Throughput::Elements(fwd_flops * 7 / 2));
        for (imp, f) in imps {
            group.bench_function(BenchmarkId::new(imp, &name), |bch| {
                bch.iter(|| {
                    let o = f(q.as_tensor(), k.as_tensor(), v.as_tensor()).unwrap();
                    (o * &g).unwrap().sum_all().unwrap().backward().unwrap()
                })
            });
        }
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
