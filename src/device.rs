//! The one place where a device is chosen: model, training and sampling code take a
//! `&Device` and never ask which kind it is.

use candle_core::Device;

/// Parses `cpu`, `cuda` or `cuda:N`. CUDA needs a build with candle's `cuda` feature.
pub fn select(name: &str) -> anyhow::Result<Device> {
    match name {
        "cpu" => Ok(Device::Cpu),
        "cuda" => Ok(Device::new_cuda(0)?),
        s if s.starts_with("cuda:") => {
            let ordinal: usize = s[5..]
                .parse()
                .map_err(|_| anyhow::anyhow!("bad device {s:?}: expected cpu, cuda or cuda:N"))?;
            Ok(Device::new_cuda(ordinal)?)
        }
        other => anyhow::bail!("unknown device {other:?}: expected cpu, cuda or cuda:N"),
    }
}

/// Sets the number of threads used by candle's matmul and by tinylm's own kernels.
/// Must run before any tensor work: candle reads `RAYON_NUM_THREADS` lazily and rayon's
/// global pool can only be built once.
pub fn set_threads(threads: usize) -> anyhow::Result<()> {
    crate::limits::check_threads(threads)?;
    std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
    // An already-built pool (e.g. in tests that call this twice) is not an error.
    let _ = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global();
    Ok(())
}

/// Measured f32 matmul rate of this device in FLOP/s (best of a few 1024³ products):
/// the denominator of MFU.
pub fn measure_matmul_flops(device: &candle_core::Device) -> anyhow::Result<f64> {
    let n = 1024;
    let a = candle_core::Tensor::ones((n, n), candle_core::DType::F32, device)?;
    let b = candle_core::Tensor::ones((n, n), candle_core::DType::F32, device)?;
    let _ = a.matmul(&b)?; // warm-up: thread pool start, first-touch of buffers
    let mut best = f64::INFINITY;
    for _ in 0..3 {
        let t = std::time::Instant::now();
        let c = a.matmul(&b)?;
        device.synchronize()?;
        drop(c);
        best = best.min(t.elapsed().as_secs_f64());
    }
    Ok(2.0 * (n * n * n) as f64 / best)
}

/// The matmul ceiling MFU is measured against, in FLOP/s: the better of candle's rate
/// on a 1024³ product and, on the CPU, the native step's own GEMM in the step's
/// precision (`products`) on its largest product (the MLP's [B·T, C]·[C, 4C]). The
/// better of the two, so that MFU is taken against the faster path: a bf16 step's
/// MFU is against the bf16 products' rate, not the f32 one.
pub fn matmul_ceiling(
    device: &candle_core::Device,
    model: &crate::model::GptConfig,
    rows: usize,
    products: crate::model::Precision,
) -> anyhow::Result<f64> {
    let candle = measure_matmul_flops(device)?;
    if !device.is_cpu() {
        return Ok(candle);
    }
    let c = model.n_embd;
    let shape = (rows.max(1), 4 * c, c);
    let native = crate::model::native::gemm_rate_in(products, shape, 5, 0.5);
    Ok(candle.max(native))
}

/// MFU's denominator for one model shape: [`matmul_ceiling`], kept as the best rate
/// seen so far. A measurement on a busy machine can come out low, and a step that then
/// seems to beat it would print an MFU over 100%. So [`Ceiling::mfu`] measures again
/// when a step beats the ceiling (at most [`Ceiling::REMEASURES`] times a run: each
/// costs about a second), and a step that still beats it raises the ceiling to its own
/// rate: the products evidently run that fast, so the printed MFU is at most 100%
/// ([`Ceiling::raised`] says when that happened, so that callers can say so).
pub struct Ceiling {
    /// The best measurement.
    measured: f64,
    /// The ceiling: the best measurement, or a faster step's own rate.
    flops: f64,
    flops_per_token: f64,
    remeasures_left: usize,
    remeasure: Box<dyn FnMut() -> anyhow::Result<f64>>,
}

impl Ceiling {
    /// Times [`Ceiling::mfu`] measures again in one run.
    pub const REMEASURES: usize = 3;

    /// Measures the ceiling for `model`'s products over `rows` = B·T rows, in the
    /// precision the step runs them (`products`).
    pub fn measure(
        device: &candle_core::Device,
        model: &crate::model::GptConfig,
        rows: usize,
        products: crate::model::Precision,
    ) -> anyhow::Result<Self> {
        let flops = matmul_ceiling(device, model, rows, products)?;
        let flops_per_token = model.flops_per_token();
        let (device, model) = (device.clone(), model.clone());
        let remeasure = move || matmul_ceiling(&device, &model, rows, products);
        Ok(Self::with(flops, flops_per_token, remeasure))
    }

    /// A ceiling measured at `flops` for a model of `flops_per_token`, measured again
    /// by `remeasure` (what [`Ceiling::measure`] builds; tests give their own).
    pub fn with(
        flops: f64,
        flops_per_token: f64,
        remeasure: impl FnMut() -> anyhow::Result<f64> + 'static,
    ) -> Self {
        Self {
            measured: flops,
            flops,
            flops_per_token,
            remeasures_left: Self::REMEASURES,
            remeasure: Box::new(remeasure),
        }
    }

    /// The ceiling in FLOP/s.
    pub fn flops(&self) -> f64 {
        self.flops
    }

    /// The best measured rate in FLOP/s (the ceiling without any step's raise).
    pub fn measured(&self) -> f64 {
        self.measured
    }

    /// Whether a step ran faster than every measurement, so that the ceiling is that
    /// step's own rate (and such a step's MFU reads 100%).
    pub fn raised(&self) -> bool {
        self.flops > self.measured
    }

    /// Model FLOP utilisation of a step that ran `tokens_per_s` tokens a second: the
    /// model's FLOPs a token ([`crate::model::GptConfig::flops_per_token`]) times
    /// `tokens_per_s`, over the ceiling, after raising the ceiling if the step beat it.
    /// NaN for a rate that is not a finite number ≥ 0 (a step timed at 0 s), which
    /// leaves the ceiling as it was; so does a re-measurement that fails.
    pub fn mfu(&mut self, tokens_per_s: f64) -> f64 {
        let achieved = tokens_per_s * self.flops_per_token;
        if !(achieved.is_finite() && achieved >= 0.0) {
            return f64::NAN;
        }
        if achieved > self.flops && self.remeasures_left > 0 {
            self.remeasures_left -= 1;
            if let Some(again) = (self.remeasure)().ok().filter(|f| f.is_finite()) {
                self.measured = self.measured.max(again);
                self.flops = self.flops.max(again);
            }
        }
        self.flops = self.flops.max(achieved);
        achieved / self.flops
    }
}

/// Threads candle and tinylm's kernels use (as `set_threads` left it).
pub fn threads() -> usize {
    candle_core::utils::get_num_threads()
}

#[cfg(test)]
mod tests {
    use super::Ceiling;
    use std::cell::Cell;
    use std::rc::Rc;

    /// A ceiling of 100 FLOP/s for a model of 10 FLOPs a token whose re-measurements
    /// return `again` in turn (an Err where it is NaN); also returns how many were taken.
    fn ceiling(again: Vec<f64>) -> (Ceiling, Rc<Cell<usize>>) {
        let calls = Rc::new(Cell::new(0));
        let c = calls.clone();
        let ceiling = Ceiling::with(100.0, 10.0, move || {
            c.set(c.get() + 1);
            match again[c.get() - 1] {
                f if f.is_nan() => anyhow::bail!("measurement failed"),
                f => Ok(f),
            }
        });
        (ceiling, calls)
    }

    #[test]
    fn a_step_under_the_ceiling_measures_nothing() {
        let (mut c, calls) = ceiling(vec![]);
        assert_eq!(c.mfu(5.0), 0.5);
        assert_eq!((calls.get(), c.flops(), c.raised()), (0, 100.0, false));
    }

    #[test]
    fn a_step_over_the_ceiling_measures_again_and_keeps_the_better() {
        // The re-measurement finds 200: MFU 150 / 200.
        let (mut c, calls) = ceiling(vec![200.0]);
        assert_eq!(c.mfu(15.0), 0.75);
        assert_eq!(
            (calls.get(), c.flops(), c.measured(), c.raised()),
            (1, 200.0, 200.0, false)
        );
        // A re-measurement lower than the ceiling does not lower it.
        let (mut c, _) = ceiling(vec![50.0]);
        assert_eq!(c.mfu(12.0), 1.0);
        assert_eq!((c.flops(), c.measured(), c.raised()), (120.0, 100.0, true));
    }

    #[test]
    fn a_step_still_over_is_the_ceiling_and_remeasures_are_bounded() {
        let (mut c, calls) = ceiling(vec![110.0; Ceiling::REMEASURES]);
        for tokens_per_s in [12.0, 13.0, 14.0, 15.0, 16.0] {
            assert_eq!(
                c.mfu(tokens_per_s),
                1.0,
                "a step faster than every measurement"
            );
            assert_eq!(c.flops(), 10.0 * tokens_per_s);
        }
        assert_eq!(calls.get(), Ceiling::REMEASURES);
        assert_eq!((c.measured(), c.raised()), (110.0, true));
        // Below the raised ceiling, the MFU is the plain ratio again.
        assert_eq!(c.mfu(8.0), 0.5);
    }

    #[test]
    fn odd_rates_and_failed_or_odd_measurements_leave_the_ceiling() {
        let (mut c, calls) = ceiling(vec![f64::NAN, f64::INFINITY, 150.0]);
        for rate in [f64::INFINITY, f64::NAN, -1.0] {
            assert!(c.mfu(rate).is_nan(), "{rate}");
        }
        assert_eq!((calls.get(), c.flops()), (0, 100.0));
        assert_eq!(c.mfu(0.0), 0.0);
        // A failed and an infinite re-measurement: the ceiling is the step's rate.
        assert_eq!(c.mfu(11.0), 1.0);
        assert_eq!(c.mfu(12.0), 1.0);
        assert_eq!((calls.get(), c.measured(), c.flops()), (2, 100.0, 120.0));
        // The third finds 150.
        assert_eq!(c.mfu(13.0), 130.0 / 150.0);
        assert_eq!((c.measured(), c.raised()), (150.0, false));
    }
}
