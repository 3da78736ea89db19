//! The fused cross-entropy row kernel, on plain slices.
//!
//! One call handles rows of logits x [N, V] (f32, bf16, f16 or f64) against targets [N]
//! and, when asked, writes the gradient d(loss)/d(x) [N, V] once. Per row ([`row`]):
//!
//! * pass A reads the row from memory: max m (+inf makes it +inf; NaN is caught by the
//!   sum of pass B, which it makes NaN);
//! * pass B re-reads it from L2: e_j = exp(y_j - m), s = Σ e_j, and Σ (m - y_j) for
//!   label smoothing; e_j goes to a scratch row (L2) when the gradient is a separate
//!   row without a soft-cap, else into the gradient row itself (in place, as the
//!   linear CE's chunks use it) or a scratch row (soft-cap);
//! * pass C writes g_j = scale · ((1 + 2z·lse)·e_j/s - ε/V - (1-ε)·[j = t]) (times
//!   1 - (y_j/c)² under a soft-cap): streamed with non-temporal stores from the scratch
//!   row (so the gradient's lines are never read: 8 bytes of traffic per element, 4
//!   for bf16/f16, rounded to nearest even, bf16 subnormals to zero; the destination
//!   may be uninitialised, see
//!   `run_fresh`), or rewritten in place.
//!
//! The row (V·4 bytes, 200 KB at V = 50304) stays in the per-core L2 between the
//! passes, so memory sees one read of the logits and one write of the gradient: the
//! llm.c / Liger-Kernel scheme. On the streamed path the rows overlap as a software
//! pipeline: pass B of row i also prefetches row i+1 and writes, block by block, the
//! streamed gradient of row i-1, so the memory reads, the exponentials and the
//! gradient's stores run together instead of taking turns. Arithmetic is in f32 (f64
//! for f64 logits, [`elem`]); the inner loops work on 16 independent accumulators so
//! that LLVM vectorises them, and the job driver ([`jobs`]) compiles the same code for
//! each SIMD level of `crate::cpu::simd`.
//!
//! Short rows (V ≤ 256, f32, no soft-cap) on AVX-512 take [`short_rows`] instead: a row
//! fits in registers, so the scratch row, the staging block and the pipeline, which
//! cost more than the arithmetic at V = 256, are not needed. Same bits as [`row`].
//!
//! bf16 rows without a soft-cap take their own arithmetic ([`bf16_rows`] on AVX-512,
//! the same bits from the generic loops elsewhere): a base-2 exponential with ~1e-6
//! relative error (`fastmath::exp_shifted_base2`), a·e - b in one FMA and subnormal
//! gradients flushed to zero, as `vcvtne2ps2bf16` rounds. Their logits carry 8
//! significant bits, and on AVX-512 the f32 kernel's 16-instruction exponential kept
//! the bf16 kernel bound by arithmetic at the f32 kernel's speed; a gradient element
//! is within one bf16 ulp of the f32 kernel's rounded to bf16. Soft-capped bf16 rows
//! are widened to f32 and computed as f32 rows are, then rounded.
//!
//! Determinism: every row is computed by the same sequential code whatever thread runs
//! it, and the caller reduces the per-row losses in row order, so results are bitwise
//! identical for any thread count.

#[cfg(target_arch = "x86_64")]
mod bf16_rows;
mod elem;
mod jobs;
mod row;
#[cfg(target_arch = "x86_64")]
mod short_rows;

pub(crate) use elem::{stream_scale_f32, Elem, Real};
pub use jobs::short_row_jobs;
pub(crate) use jobs::{run, run_fresh, run_in_place, KernelError};
pub(crate) use row::{Params, RowOut, RowScale};
