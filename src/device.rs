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
/// on a 1024³ product and, on the CPU, the native step's own GEMM on its largest
/// product (the MLP's [B·T, C]·[C, 4C]). The better of the two, so that MFU is taken
/// against the faster path.
pub fn matmul_ceiling(
    device: &candle_core::Device,
    model: &crate::model::GptConfig,
    rows: usize,
) -> anyhow::Result<f64> {
    let candle = measure_matmul_flops(device)?;
    if !device.is_cpu() {
        return Ok(candle);
    }
    let c = model.n_embd;
    let native = crate::model::native::gemm_rate(rows.max(1), 4 * c, c, 5, 0.5);
    Ok(candle.max(native))
}

/// MFU's denominator for one model shape: [`matmul_ceiling`], kept as the best
/// measured so far. A measurement on a busy machine can come out low, and a step that
/// then seems to beat it would print an MFU over 100%: [`Ceiling::mfu`] measures again
/// whenever a step beats the ceiling and keeps the better figure.
pub struct Ceiling {
    device: candle_core::Device,
    model: crate::model::GptConfig,
    rows: usize,
    flops: f64,
}

impl Ceiling {
    /// Measures the ceiling for `model`'s products over `rows` = B·T rows.
    pub fn measure(
        device: &candle_core::Device,
        model: &crate::model::GptConfig,
        rows: usize,
    ) -> anyhow::Result<Self> {
        let flops = matmul_ceiling(device, model, rows)?;
        Ok(Self {
            device: device.clone(),
            model: model.clone(),
            rows,
            flops,
        })
    }

    /// The ceiling in FLOP/s.
    pub fn flops(&self) -> f64 {
        self.flops
    }

    /// Model FLOP utilisation of a step that ran `tokens_per_s` tokens a second:
    /// `tokens_per_s` x the model's [`flops_per_token`](crate::model::GptConfig::flops_per_token)
    /// over the ceiling, measured again first if the step beat it.
    pub fn mfu(&mut self, tokens_per_s: f64) -> anyhow::Result<f64> {
        let achieved = tokens_per_s * self.model.flops_per_token();
        if achieved > self.flops {
            let again = matmul_ceiling(&self.device, &self.model, self.rows)?;
            self.flops = self.flops.max(again);
        }
        Ok(achieved / self.flops)
    }
}

/// Threads candle and tinylm's kernels use (as `set_threads` left it).
pub fn threads() -> usize {
    candle_core::utils::get_num_threads()
}
