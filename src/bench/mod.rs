//! The `tinylm bench` cases, shared by the CLI and by `benches/` (criterion).
//!
//! Each case prints a table, or with `--json` a JSON array of records. Timings are
//! medians over repetitions after a warm-up; memory is the peak of live heap bytes
//! during the call minus before it, read from [`alloc::CountingAlloc`] (the binary and
//! the criterion benches install it as the global allocator).

pub mod alloc;
pub mod attention;
pub mod loss;
pub mod train;

/// What every bench case is told by the command line.
#[derive(Debug, Clone)]
pub struct BenchArgs {
    /// Print a JSON array of records instead of a table.
    pub json: bool,
    /// Only run cases whose name contains this.
    pub filter: Option<String>,
    /// Fewer repetitions and smaller shapes: a smoke run for tests.
    pub quick: bool,
    /// `bench train`: the precision of the step's products (`train --dtype`).
    pub dtype: crate::model::Precision,
}

/// Fails when `args.filter` selects none of `cases` (by the bench's own rule,
/// `selects`), naming them all: a mistyped filter must not give an empty table and
/// exit 0. Called before any measurement.
pub fn check_filter(
    args: &BenchArgs,
    cases: &[String],
    selects: impl Fn(&str, &str) -> bool,
) -> anyhow::Result<()> {
    if let Some(f) = &args.filter {
        anyhow::ensure!(
            cases.iter().any(|c| selects(f, c)),
            "--filter {f} matches no case; cases are: {}",
            cases.join(", ")
        );
    }
    Ok(())
}

/// Median of a set of timings (ms). Panics on an empty slice.
pub fn median(xs: &mut [f64]) -> f64 {
    xs.sort_by(|a, b| a.total_cmp(b));
    let n = xs.len();
    if n % 2 == 1 {
        xs[n / 2]
    } else {
        0.5 * (xs[n / 2 - 1] + xs[n / 2])
    }
}

/// Times `f` after `warmup` untimed calls: at least `min_reps` repetitions and enough
/// to fill about `target_s` seconds. Returns the median in milliseconds.
pub fn time_median_ms(warmup: usize, min_reps: usize, target_s: f64, mut f: impl FnMut()) -> f64 {
    for _ in 0..warmup {
        f();
    }
    let t0 = std::time::Instant::now();
    f();
    let first = t0.elapsed().as_secs_f64();
    let reps = min_reps
        .max((target_s / first.max(1e-6)).ceil() as usize)
        .min(50);
    let mut ts = vec![first * 1e3];
    for _ in 1..reps {
        let t = std::time::Instant::now();
        f();
        ts.push(t.elapsed().as_secs_f64() * 1e3);
    }
    median(&mut ts)
}
