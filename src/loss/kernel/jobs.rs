//! The job driver: rows in rayon jobs, each job's rows through the row kernel compiled
//! for the SIMD level (or the short-row kernel), and the first faulty row reported as a
//! [`KernelError`].

use super::elem::{store_fence, Elem, Real};
use super::row::{flush, row, Params, RowFault, RowIo, RowOut, RowScale, Scratch};
#[cfg(target_arch = "x86_64")]
use super::short_rows;
#[cfg(target_arch = "x86_64")]
use crate::cpu::as_uninit;
use crate::cpu::simd::dispatch;
#[cfg(target_arch = "x86_64")]
use crate::cpu::simd::{self, Level};
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// Errors found by the kernel, reported for the first offending row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum KernelError {
    NonFinite { row: usize },
    AllNegInf { row: usize },
    TargetOutOfRange { row: usize, target: u32, v: usize },
}

impl std::fmt::Display for KernelError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KernelError::NonFinite { row } => {
                write!(f, "cross_entropy: NaN or +inf in the logits of row {row}")
            }
            KernelError::AllNegInf { row } => {
                write!(f, "cross_entropy: every logit of row {row} is -inf")
            }
            KernelError::TargetOutOfRange { row, target, v } => {
                write!(
                    f,
                    "cross_entropy: target {target} of row {row} is out of range for V = {v}"
                )
            }
        }
    }
}

/// Rows per rayon job: about 64K elements, so that small-V cases amortise the job
/// overhead, but at least 8 rows while that leaves 4 jobs per thread, so that large-V
/// rows still pipeline (a job's last row gets no next row to write its gradient
/// during). Results do not depend on it (rows are independent and reduced in order
/// afterwards).
fn rows_per_job(n: usize, v: usize) -> usize {
    let by_size = 65_536 / v.max(1);
    let by_spread = n / (4 * rayon::current_num_threads()).max(1);
    by_size.max(by_spread.min(8)).max(1)
}

/// Where the gradient rows of a run go.
enum Dest<'a, T> {
    /// No gradient (forward only).
    Nothing,
    /// Initialised rows of T: a separate buffer, or the logits themselves (in place).
    Rows(&'a mut [T]),
    /// Uninitialised rows, every element of which the kernel writes when it succeeds.
    Fresh(&'a mut [MaybeUninit<T>]),
}

/// Runs the kernel over all rows of `x` [N, V] (row-major, contiguous).
///
/// `grad`, when given, is [N, V] and receives scale_i · d(row loss_i)/d(x_i).
/// Returns one `RowOut` per row, or the first row's error.
pub(crate) fn run<T: Elem<F>, F: Real>(
    x: &[T],
    targets: &[u32],
    p: &Params,
    scale: RowScale<'_>,
    grad: Option<&mut [T]>,
) -> Result<Vec<RowOut>, KernelError> {
    assert_eq!(x.len(), targets.len() * p.v, "logits are not [N, V]");
    let dest = match grad {
        Some(g) => Dest::Rows(g),
        None => Dest::Nothing,
    };
    run_rows(Some(x), targets, p, scale, dest)
}

/// [`run`] with the gradient written into uninitialised memory `grad` [N, V] (no
/// soft-cap): on `Ok`, every element of it has been written, so a caller can allocate
/// it without zero-filling. On `Err` it is partly written.
pub(crate) fn run_fresh<T: Elem<F>, F: Real>(
    x: &[T],
    targets: &[u32],
    p: &Params,
    scale: RowScale<'_>,
    grad: &mut [MaybeUninit<T>],
) -> Result<Vec<RowOut>, KernelError> {
    assert!(p.softcap.is_none(), "run_fresh: no soft-cap");
    assert_eq!(x.len(), targets.len() * p.v, "logits are not [N, V]");
    run_rows(Some(x), targets, p, scale, Dest::Fresh(grad))
}

/// [`run`] with the gradient written over the logits: `xg` [N, V] holds the logits on
/// entry and scale_i · d(row loss_i)/d(x_i) on exit. For buffers the caller owns (the
/// chunked linear cross-entropy), so that a chunk needs one [rows, V] buffer, not two.
pub(crate) fn run_in_place<F: Real>(
    xg: &mut [F],
    targets: &[u32],
    p: &Params,
    scale: RowScale<'_>,
) -> Result<Vec<RowOut>, KernelError> {
    run_rows::<F, F>(None, targets, p, scale, Dest::Rows(xg))
}

fn run_rows<T: Elem<F>, F: Real>(
    x: Option<&[T]>,
    targets: &[u32],
    p: &Params,
    scale: RowScale<'_>,
    data: Dest<'_, T>,
) -> Result<Vec<RowOut>, KernelError> {
    let v = p.v;
    let n = targets.len();
    let mut outs = vec![RowOut::default(); n];
    let rpj = rows_per_job(n, v);
    let job = Job {
        x,
        targets,
        p,
        scale,
    };
    match data {
        Dest::Rows(g) => {
            assert_eq!(g.len(), n * v, "gradient is not [N, V]");
            outs.par_chunks_mut(rpj)
                .zip(g.par_chunks_mut(rpj * v))
                .enumerate()
                .for_each_init(Scratch::<F>::new, |sc, (j, (o, gc))| {
                    job.run(j * rpj, o, Dest::Rows(gc), sc)
                });
        }
        Dest::Fresh(g) => {
            assert_eq!(g.len(), n * v, "gradient is not [N, V]");
            outs.par_chunks_mut(rpj)
                .zip(g.par_chunks_mut(rpj * v))
                .enumerate()
                .for_each_init(Scratch::<F>::new, |sc, (j, (o, gc))| {
                    job.run(j * rpj, o, Dest::Fresh(gc), sc)
                });
        }
        Dest::Nothing => {
            outs.par_chunks_mut(rpj)
                .enumerate()
                .for_each_init(Scratch::<F>::new, |sc, (j, o)| {
                    job.run(j * rpj, o, Dest::Nothing, sc)
                });
        }
    }
    for (row, o) in outs.iter().enumerate() {
        if let Some(fault) = o.fault {
            return Err(match fault {
                RowFault::NonFinite => KernelError::NonFinite { row },
                RowFault::AllNegInf => KernelError::AllNegInf { row },
                RowFault::TargetOutOfRange => KernelError::TargetOutOfRange {
                    row,
                    target: targets[row],
                    v,
                },
            });
        }
    }
    Ok(outs)
}

/// The inputs shared by every rayon job of one run.
struct Job<'a, T> {
    /// The logits [N, V], or `None` when they are in the data rows (in place).
    x: Option<&'a [T]>,
    targets: &'a [u32],
    p: &'a Params,
    scale: RowScale<'a>,
}

impl<T> Job<'_, T> {
    /// Rows `i0 .. i0 + outs.len()`; `data` (gradient or in-place rows) holds exactly
    /// those rows.
    fn run<F: Real>(&self, i0: usize, outs: &mut [RowOut], data: Dest<'_, T>, sc: &mut Scratch<F>)
    where
        T: Elem<F>,
    {
        // Short f32 rows in registers where the CPU has AVX-512, the rest (and those
        // elsewhere) through the general row kernel.
        #[cfg(target_arch = "x86_64")]
        let data = self.try_short_rows(i0, outs, data, sc).err();
        #[cfg(not(target_arch = "x86_64"))]
        let data = Some(data);
        if let Some(data) = data {
            job_rows(self, i0, outs, data, sc);
        }
        // The streamed gradient stores are visible before the job ends. Always, not only
        // after an AVX-512 copy: `stream_copy` reads the SIMD level again and a test may
        // change the cap in between.
        store_fence();
    }

    /// Rows of f32 logits with V ≤ 256 and no soft-cap, read from a separate buffer, go
    /// to [`short_rows`] when the SIMD level is AVX-512; every other job is handed back
    /// untouched (`Err(data)`).
    #[cfg(target_arch = "x86_64")]
    fn try_short_rows<'d, F: Real>(
        &self,
        i0: usize,
        outs: &mut [RowOut],
        data: Dest<'d, T>,
        sc: &mut Scratch<F>,
    ) -> Result<(), Dest<'d, T>>
    where
        T: Elem<F>,
    {
        use std::any::TypeId;
        let f32_rows =
            TypeId::of::<T>() == TypeId::of::<f32>() && TypeId::of::<F>() == TypeId::of::<f32>();
        let short = (1..=short_rows::MAX_V).contains(&self.p.v) && self.p.softcap.is_none();
        let avx512 = simd::level() == Level::Avx512;
        let (Some(x), true) = (self.x, f32_rows && short && avx512) else {
            return Err(data);
        };
        // SAFETY: T is f32 (TypeId above): the same type under another name.
        let x: &[f32] = unsafe { std::slice::from_raw_parts(x.as_ptr().cast(), x.len()) };
        // SAFETY: F is f32 (TypeId above).
        let sc = unsafe { &mut *(sc as *mut Scratch<F>).cast::<Scratch<f32>>() };
        let grad: Option<&mut [MaybeUninit<f32>]> = match data {
            Dest::Nothing => None,
            // SAFETY: T is f32; the rows are separate from x (x is given). The view is
            // `MaybeUninit` only for the kernel's signature: it writes initialised values.
            Dest::Rows(g) => Some(as_uninit(unsafe {
                std::slice::from_raw_parts_mut(g.as_mut_ptr().cast::<f32>(), g.len())
            })),
            // SAFETY: T is f32.
            Dest::Fresh(g) => Some(unsafe {
                std::slice::from_raw_parts_mut(g.as_mut_ptr().cast::<MaybeUninit<f32>>(), g.len())
            }),
        };
        let rows = short_rows::Rows {
            x,
            targets: self.targets,
            p: self.p,
            scale: self.scale,
            i0,
        };
        // SAFETY: `simd::level` reported AVX-512 (F, BW and VL).
        unsafe { short_rows::rows(rows, outs, grad, sc) };
        Ok(())
    }
}

dispatch!(fn job_rows<T: Elem<F>, F: Real>(
    job: &Job<'_, T>,
    i0: usize,
    outs: &mut [RowOut],
    data: Dest<'_, T>,
    sc: &mut Scratch<F>,
) = rows);

/// The general row kernel over a job's rows (what [`job_rows`] compiles per SIMD level:
/// the row loops, all `inline(always)`, are inlined into each copy).
#[inline(always)]
fn rows<T: Elem<F>, F: Real>(
    job: &Job<'_, T>,
    i0: usize,
    outs: &mut [RowOut],
    data: Dest<'_, T>,
    sc: &mut Scratch<F>,
) {
    let v = job.p.v;
    let scale_of = |i: usize| F::from_f64(job.scale.of_row(i));
    // The row after i (which this thread most likely takes next), for prefetching.
    // (Prefetching further ahead made no difference, even at V = 256.)
    let next_of = |i: usize| -> &[T] {
        match job.x {
            Some(x) if (i + 2) * v <= x.len() => &x[(i + 1) * v..(i + 2) * v],
            _ => &[],
        }
    };
    // A streamed row's gradient is written during the next row's pass B.
    let mut pending = None;
    match data {
        Dest::Rows(g) => {
            for (k, (o, gr)) in outs.iter_mut().zip(g.chunks_exact_mut(v)).enumerate() {
                let i = i0 + k;
                let io = match job.x {
                    Some(x) => RowIo::Separate(&x[i * v..(i + 1) * v], Some(gr)),
                    None => RowIo::InPlace(gr),
                };
                let (t, sc_i) = (job.targets[i], scale_of(i));
                *o = row(io, next_of(i), t, job.p, sc_i, sc, &mut pending);
            }
        }
        Dest::Fresh(g) => {
            let x = job.x.expect("fresh rows are separate");
            for (k, (o, gr)) in outs.iter_mut().zip(g.chunks_exact_mut(v)).enumerate() {
                let i = i0 + k;
                let io = RowIo::Fresh(&x[i * v..(i + 1) * v], gr);
                let (t, sc_i) = (job.targets[i], scale_of(i));
                *o = row(io, next_of(i), t, job.p, sc_i, sc, &mut pending);
            }
        }
        Dest::Nothing => {
            let x = job.x.expect("logits or in-place rows");
            for (k, o) in outs.iter_mut().enumerate() {
                let i = i0 + k;
                let io = RowIo::Separate(&x[i * v..(i + 1) * v], None);
                let t = job.targets[i];
                *o = row::<T, F>(io, next_of(i), t, job.p, F::ZERO, sc, &mut pending);
            }
        }
    }
    flush(&mut pending, sc);
}

/// Jobs run by the short-row kernel since the process started: lets tests see that
/// the registers path really ran (it only does on AVX-512 CPUs).
#[doc(hidden)]
pub fn short_row_jobs() -> u64 {
    #[cfg(target_arch = "x86_64")]
    return short_rows::JOBS.load(std::sync::atomic::Ordering::Relaxed);
    #[cfg(not(target_arch = "x86_64"))]
    0
}
