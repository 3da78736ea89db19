//! Runs `tinylm bench loss` without the CLI: `cargo run --release --example bench_loss
//! -- [--json] [--quick] [--filter NAME] [--threads K]` (default 2 threads).

#[global_allocator]
static A: tinylm::bench::alloc::CountingAlloc = tinylm::bench::alloc::CountingAlloc;

fn main() -> anyhow::Result<()> {
    // As `tinylm` does first thing (src/main.rs): freed large buffers stay for reuse.
    tinylm::cpu::tune_glibc_malloc();
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let flag = |f: &str| argv.iter().any(|a| a == f);
    let value = |f: &str| {
        argv.iter()
            .position(|a| a == f)
            .and_then(|i| argv.get(i + 1))
            .cloned()
    };
    let threads: usize = value("--threads")
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(2);
    // candle's matmul reads RAYON_NUM_THREADS; the kernels use the global rayon pool.
    std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()?;
    let args = tinylm::bench::BenchArgs {
        json: flag("--json"),
        filter: value("--filter"),
        quick: flag("--quick"),
        dtype: Default::default(),
    };
    tinylm::bench::loss::run(&args)
}
