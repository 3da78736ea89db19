//! Stand-alone entry to `tinylm bench attention` (same code, same output):
//! `RAYON_NUM_THREADS=2 cargo run --release --example bench_attention -- [--json] [--quick] [--filter NAME]`

#[global_allocator]
static A: tinylm::bench::alloc::CountingAlloc = tinylm::bench::alloc::CountingAlloc;

fn main() -> anyhow::Result<()> {
    // As `tinylm` does first thing (src/main.rs): freed large buffers stay for reuse.
    tinylm::cpu::tune_glibc_malloc();
    let mut args = tinylm::bench::BenchArgs {
        json: false,
        filter: None,
        quick: false,
        dtype: Default::default(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--json" => args.json = true,
            "--quick" => args.quick = true,
            "--filter" => args.filter = it.next(),
            other => anyhow::bail!("unknown argument {other}"),
        }
    }
    tinylm::bench::attention::run(&args)
}
