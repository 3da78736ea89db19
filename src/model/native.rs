//! The training step without candle's graph: the whole GPT's forward and backward on
//! raw buffers (f32; under bf16 products the activations only they read are bf16),
//! layer by layer, in the manner of llm.c's `train_gpt2.c`.
//!
//! Why it exists: with every heavy op already fused, the candle graph around them cost
//! more than the ops: its element-wise pool waiting between ops, its single-threaded
//! unary/binary maps, and the zero-fill + add that its autograd spends on every
//! gradient (BENCHMARKS.md, "Training step", has the breakdown). Here each layer
//! is a forward/backward pair of the same fused kernels (LayerNorm, GELU, attention,
//! cross-entropy) and gemm calls that write into their destination: the bias and the
//! residual are the gemm's initial value, weight gradients accumulate in the gemm
//! (so micro-batches sum with no extra pass), and nothing is zero-filled to be added to.
//!
//! Notation as in `model`: B batch, T positions, C width, H heads, D = C/H, V
//! vocabulary, N = B·T rows, L layers.
//!
//! The candle graph (`Gpt::loss` + `backward`) stays the reference: tests/native.rs
//! compares every gradient with it and with the f64 reference, and checks bitwise
//! determinism and micro-batch accumulation. The math per layer (x is the residual
//! stream [N, C]):
//!
//! ```text
//! a   = LN1(x)                                   [N, C]
//! qkv = a · W_attnᵀ + b_attn  -> q, k, v          [N, 3C] -> 3 x [B, H, T, D]
//! o   = causal_attention(q, k, v)                [B, H, T, D] -> y [N, C]
//! x2  = x + y · W_projᵀ + b_proj                 [N, C]
//! m   = LN2(x2)                                  [N, C]
//! f   = m · W_fcᵀ + b_fc,  g = GELU(f)           [N, 4C]
//! out = x2 + g · W_mpᵀ + b_mp                    [N, C]
//! ```

use super::params::{Affine, Block, Params};
use super::{Gpt, Precision};
use crate::attention::kernel as attn;
use crate::cpu::{as_uninit, assume_init, storage_slice, uninit_vec};
use crate::kernels::gemm_bf16::{self, Factor};
use crate::kernels::{gelu, layer_norm, rope, Stored};
use crate::loss::head::{tied_head, HeadError, Operand};
use crate::loss::{CrossEntropyOptions, Reduction};
use candle_core::{bail, Result};
use half::bf16;
use rayon::prelude::*;
use std::mem::MaybeUninit;
use std::time::Instant;

const LN_EPS: f64 = super::LN_EPS;

/// Rows per parallel task of the element-wise passes; fixed, so that partial sums (the
/// bias gradients) do not depend on the thread count.
const ROWS_PER_TASK: usize = 64;

/// What one call returns.
#[derive(Debug, Clone, Copy)]
pub struct NativeOutcome {
    /// The loss as `opts` reduces it; NaN when the logits were not finite (the gradients
    /// are then incomplete and the step must be skipped).
    pub loss: f64,
    /// Seconds in the forward (including the output head's fused backward, as in
    /// candle's `linear_cross_entropy`) and in the rest of the backward.
    pub forward_s: f64,
    pub backward_s: f64,
}

/// Zeroed gradient buffers, one per parameter in the model's flat order
/// (`params::Params::into_flat`).
pub fn zero_grads(model: &Gpt) -> Vec<Vec<f32>> {
    model
        .config
        .param_shapes()
        .iter()
        .map(|(_, s)| vec![0f32; s.iter().product()])
        .collect()
}

/// Whether [`loss_and_grad_into`] can run this model: f32 parameters on the CPU, fused
/// kernels.
pub fn supported(model: &Gpt) -> bool {
    !model.reference_kernels
        && model.params().iter().all(|(_, v)| {
            v.device().is_cpu()
                && v.dtype() == candle_core::DType::F32
                && v.as_tensor().is_contiguous()
        })
}

/// Next-token cross-entropy of idx [B, T] against targets [B, T] (row-major u32), and its
/// gradient with respect to every parameter *added into* `grads` (see [`zero_grads`]),
/// so that k calls with `opts.normalizer = B·T·k` accumulate the gradient of the mean
/// over the k micro-batches. Reductions mean and sum.
///
/// When the loss comes back NaN (non-finite logits) or the call returns `Err` (e.g. a
/// target outside the vocabulary), `grads` may already hold part of this call's
/// contribution and must be discarded (the trainer skips the step, or stops).
pub fn loss_and_grad_into(
    model: &Gpt,
    idx: &[u32],
    targets: &[u32],
    bt: (usize, usize),
    opts: &CrossEntropyOptions,
    grads: &mut [Vec<f32>],
) -> Result<NativeOutcome> {
    loss_and_grad_with(model, idx, targets, bt, opts, grads, Precision::F32)
}

/// [`loss_and_grad_into`] with the matrix products (the layers' and the output head's)
/// in `products`' precision. With [`Precision::Bf16`] each product rounds its two
/// factors to bf16 and sums in f32 (`kernels::gemm_bf16`: AVX512-BF16 where the CPU
/// has it, a portable kernel with the same rounding elsewhere); everything else is
/// as in f32, but for the activations kept only as factors of those products, which
/// are stored in the bf16 they would be rounded to ([`Saved`]: the same bits).
pub fn loss_and_grad_with(
    model: &Gpt,
    idx: &[u32],
    targets: &[u32],
    bt: (usize, usize),
    opts: &CrossEntropyOptions,
    grads: &mut [Vec<f32>],
    products: Precision,
) -> Result<NativeOutcome> {
    let store_bf16 = products == Precision::Bf16;
    step(model, idx, targets, bt, opts, grads, (products, store_bf16))
}

/// [`loss_and_grad_with`], with the product-only activations stored in bf16 when
/// `store_bf16` (only under bf16 products; the tests compare it with f32 storage).
fn step(
    model: &Gpt,
    idx: &[u32],
    targets: &[u32],
    (b, t): (usize, usize),
    opts: &CrossEntropyOptions,
    grads: &mut [Vec<f32>],
    (products, store_bf16): (Precision, bool),
) -> Result<NativeOutcome> {
    debug_assert!(!store_bf16 || products == Precision::Bf16);
    let cfg = &model.config;
    if !supported(model) {
        bail!("native step: needs f32 CPU parameters and the fused kernels")
    }
    if opts.reduction == Reduction::None {
        bail!("native step: reduction none is not a training loss")
    }
    if idx.len() != b * t || targets.len() != b * t {
        bail!("native step: idx and targets must hold B·T = {} ids", b * t)
    }
    if t == 0 || t > cfg.block_size {
        bail!("native step: T = {t} is outside 1..={}", cfg.block_size)
    }
    if let Some(&bad) = idx.iter().find(|&&i| i as usize >= cfg.vocab_size) {
        bail!(
            "native step: token id {bad} is outside the vocabulary of {}",
            cfg.vocab_size
        )
    }
    let shapes = cfg.param_shapes();
    if grads.len() != shapes.len()
        || grads
            .iter()
            .zip(&shapes)
            .any(|(g, (_, s))| g.len() != s.iter().product::<usize>())
    {
        bail!("native step: gradient buffers do not match the parameters")
    }
    let guards: Vec<_> = model
        .params()
        .iter()
        .map(|(_, v)| v.as_tensor().storage_and_layout())
        .collect();
    let w = guards
        .iter()
        .map(|(s, l)| storage_slice::<f32>(s, l))
        .collect::<Result<Vec<_>>>()?;
    let w = Params::from_flat(w, cfg).expect("the model's parameters follow its layout");
    let mut g = Params::from_flat(grads.iter_mut(), cfg).expect("checked against the shapes");
    let rope_tables = (cfg.positions == super::Positions::Rotary)
        .then(|| rope::Tables::new(t, cfg.n_embd / cfg.n_head));
    let dm = Dims {
        products,
        store_bf16,
        rope: rope_tables.as_ref(),
        b,
        t,
        c: cfg.n_embd,
        h: cfg.n_head,
        v: cfg.vocab_size,
        n: b * t,
    };
    let t0 = Instant::now();
    // ---- forward
    let mut x = embed(&dm, idx, w.wte, w.wpe); // [N, C]
    let mut acts = Vec::with_capacity(cfg.n_layer);
    for blk in &w.blocks {
        let (a, out) = block_forward(&dm, blk, x);
        acts.push(a);
        x = out;
    }
    let (lnf, lnf_mean, lnf_rstd) = layer_norm::forward(&x, w.ln_f.weight, w.ln_f.bias, LN_EPS);
    // ---- output head and loss, with the head's backward (dwte, d lnf) in the same pass
    let (loss, dlnf) = match head(&dm, &lnf, w.wte, targets, opts, g.wte) {
        Ok(r) => r,
        Err(HeadError::NonFinite) => {
            return Ok(NativeOutcome {
                loss: f64::NAN,
                forward_s: t0.elapsed().as_secs_f64(),
                backward_s: 0.0,
            })
        }
        Err(HeadError::Other(e)) => return Err(e),
    };
    let t1 = Instant::now();
    // ---- backward
    let stats = (lnf_mean, lnf_rstd);
    let mut dx = ln_backward(&x, &dlnf, w.ln_f.weight, &stats, &mut g.ln_f);
    drop((lnf, dlnf, x));
    for (blk, gb) in w.blocks.iter().zip(g.blocks.iter_mut()).rev() {
        let a = acts.pop().expect("one per layer");
        dx = block_backward(&dm, blk, a, dx, gb);
    }
    embed_backward(&dm, idx, &dx, g.wte, g.wpe.map(|g| g.as_mut_slice()));
    Ok(NativeOutcome {
        loss,
        forward_s: (t1 - t0).as_secs_f64(),
        backward_s: t1.elapsed().as_secs_f64(),
    })
}

#[derive(Clone, Copy)]
struct Dims<'a> {
    /// The precision of the matrix products.
    products: Precision,
    /// Whether the product-only activations are stored in bf16 ([`Saved::Bf16`]).
    store_bf16: bool,
    /// Rotary positions: q and k rotated after the qkv projection by these angles.
    rope: Option<&'a rope::Tables>,
    b: usize,
    t: usize,
    c: usize,
    h: usize,
    v: usize,
    n: usize,
}

impl Dims<'_> {
    fn d(&self) -> usize {
        self.c / self.h
    }

    /// The step's matrix product ([`product`]) in its precision, on the rayon pool.
    fn gemm(
        &self,
        shape: (usize, usize, usize),
        dst: &mut [MaybeUninit<f32>],
        acc: bool,
        a: Operand,
        b: Operand,
    ) {
        product(
            self.products,
            rayon::current_num_threads(),
            shape,
            dst,
            acc,
            a,
            b,
        )
    }

    /// A product with a factor of [`Saved::Bf16`] (stored only under bf16 products,
    /// whose rounding it already has): [`product`]'s bf16 branch.
    fn gemm_bf16<A: Factor, B: Factor>(
        &self,
        shape: (usize, usize, usize),
        dst: &mut [MaybeUninit<f32>],
        acc: bool,
        a: gemm_bf16::Operand<A>,
        b: gemm_bf16::Operand<B>,
    ) {
        debug_assert_eq!(self.products, Precision::Bf16);
        product_bf16(rayon::current_num_threads(), shape, dst, acc, a, b)
    }

    /// An activation kept only for the products it feeds, made by `f32` or `bf16`
    /// as this step stores it.
    fn saved(&self, f32: impl FnOnce() -> Vec<f32>, bf16: impl FnOnce() -> Vec<bf16>) -> Saved {
        if self.store_bf16 {
            Saved::Bf16(bf16())
        } else {
            Saved::F32(f32())
        }
    }
}

/// An activation the backward needs only as a factor of matrix products (a LayerNorm's
/// output, GELU's, attention's heads side by side): f32, or under bf16 products the
/// bf16 those products would round it to, written so by the kernel that makes it. The
/// same bits reach the products; it takes half the memory and half the bytes to pack.
enum Saved {
    F32(Vec<f32>),
    Bf16(Vec<bf16>),
}

// ---------------------------------------------------------------------------------------
// Matrix products: gemm writing (or adding) into its destination.

/// The FLOP/s of this step's own f32 matrix product ([`product`], the threads of the
/// current pool) on [m, k]·[k, n]: the best of at least `reps` products and at least
/// `min_secs` of them, after a warm-up, so that a clock still ramping up or a moment's
/// contention does not lower the ceiling MFU is measured against.
pub fn gemm_rate(m: usize, n: usize, k: usize, reps: usize, min_secs: f64) -> f64 {
    gemm_rate_in(Precision::F32, (m, n, k), reps, min_secs)
}

/// [`gemm_rate`] of the products in `products`' precision.
pub fn gemm_rate_in(
    products: Precision,
    (m, n, k): (usize, usize, usize),
    reps: usize,
    min_secs: f64,
) -> f64 {
    let a = vec![1.0f32; m * k];
    let b = vec![1.0f32; k * n];
    let mut c = uninit_vec(m * n);
    let gemm_into = |shape, dst: &mut [MaybeUninit<f32>], acc, a: Operand, b: Operand| {
        product(
            products,
            rayon::current_num_threads(),
            shape,
            dst,
            acc,
            a,
            b,
        )
    };
    gemm_into((m, n, k), &mut c, false, (&a, k, 1), (&b, n, 1)); // warm-up
    let start = std::time::Instant::now();
    let mut best = f64::INFINITY;
    let mut done = 0;
    while done < reps.max(1) || start.elapsed().as_secs_f64() < min_secs {
        let t = std::time::Instant::now();
        gemm_into((m, n, k), &mut c, false, (&a, k, 1), (&b, n, 1));
        best = best.min(t.elapsed().as_secs_f64());
        done += 1;
    }
    2.0 * (m * n * k) as f64 / best
}

/// FLOPs (2·m·n·k a product) done by every product of this process: each
/// [`gemm_into_strided`] call (f32: [`gemm_into_threads`] and Muon's symmetric blocks)
/// and each bf16 product of [`product`].
static GEMM_FLOPS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// FLOPs every product of this process (f32 and bf16) has executed so far: the
/// step's forward, backward and head products, Muon's Newton–Schulz products, and any
/// other caller (the MFU ceiling's measurement, evaluation). A difference across a
/// call counts that call's products only when nothing else runs meanwhile; it backs
/// the check that MFU's numerator claims what the products run (tests/mfu.rs).
pub fn gemm_flops_done() -> u64 {
    GEMM_FLOPS.load(std::sync::atomic::Ordering::Relaxed)
}

/// dst [m, n] = (dst if `acc` else 0) + A · B, with A [m, k] and B [k, n] given as
/// (data, row stride, column stride), in `products`' precision: f32 through the gemm
/// crate, bf16 through `kernels::gemm_bf16`. Parallel over the rayon pool when
/// `threads` > 1; each entry's k-sum runs in a fixed order, so results repeat bit for
/// bit at a fixed thread count. With `acc` false every entry of dst is written and
/// none is read. Both precisions count their FLOPs in [`gemm_flops_done`].
fn product(
    products: Precision,
    threads: usize,
    shape: (usize, usize, usize),
    dst: &mut [MaybeUninit<f32>],
    acc: bool,
    a: Operand,
    b: Operand,
) {
    match products {
        Precision::F32 => gemm_into_threads(threads, shape, dst, acc, a, b),
        Precision::Bf16 => product_bf16(threads, shape, dst, acc, a, b),
    }
}

/// The bf16 [`product`], of factors in f32 or already in bf16.
fn product_bf16<A: Factor, B: Factor>(
    threads: usize,
    shape: (usize, usize, usize),
    dst: &mut [MaybeUninit<f32>],
    acc: bool,
    a: gemm_bf16::Operand<A>,
    b: gemm_bf16::Operand<B>,
) {
    let (m, n, k) = shape;
    GEMM_FLOPS.fetch_add(2 * (m * n * k) as u64, std::sync::atomic::Ordering::Relaxed);
    gemm_bf16::gemm(threads, shape, (dst, n), acc, a, b)
}

/// The f32 [`product`] on at most `threads` threads (1: on the calling thread, for
/// callers that are already parallel over several products).
pub(crate) fn gemm_into_threads(
    threads: usize,
    (m, n, k): (usize, usize, usize),
    dst: &mut [MaybeUninit<f32>],
    acc: bool,
    a: (&[f32], usize, usize),
    b: (&[f32], usize, usize),
) {
    gemm_into_strided(threads, (m, n, k), (dst, n), acc, a, b)
}

/// [`gemm_into_threads`] into a block of a wider matrix: dst row r starts at
/// `r * dst_rs` (`dst_rs` ≥ n); entries between the rows are neither read nor written.
pub(crate) fn gemm_into_strided(
    threads: usize,
    (m, n, k): (usize, usize, usize),
    (dst, dst_rs): (&mut [MaybeUninit<f32>], usize),
    acc: bool,
    (a, a_rs, a_cs): (&[f32], usize, usize),
    (b, b_rs, b_cs): (&[f32], usize, usize),
) {
    let operands = ((a, a_rs, a_cs), (b, b_rs, b_cs));
    if !gemm_bf16::checked_product(
        "gemm",
        (m, n, k),
        (dst, dst_rs),
        acc,
        operands.0,
        operands.1,
    ) {
        return;
    }
    GEMM_FLOPS.fetch_add(2 * (m * n * k) as u64, std::sync::atomic::Ordering::Relaxed);
    let par = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the asserts above keep every index gemm forms inside the three slices,
    // dst does not alias a or b (a &mut and two & borrows), and gemm reads dst only
    // when `acc` (callers pass initialised dst then, see the wrappers).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr() as *mut f32,
            1,
            dst_rs as isize,
            acc,
            a.as_ptr(),
            a_cs as isize,
            a_rs as isize,
            b.as_ptr(),
            b_cs as isize,
            b_rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            par,
        )
    }
}

/// A new buffer of n values, all of which `fill` writes (no zero-fill first: the
/// model's buffers are megabytes, and every one is overwritten).
fn filled<T>(n: usize, fill: impl FnOnce(&mut [MaybeUninit<T>])) -> Vec<T> {
    let mut v = uninit_vec(n);
    fill(&mut v);
    // SAFETY: every caller's `fill` writes all n elements.
    unsafe { assume_init(v) }
}

/// dst [m, n] += x [m, k] · wᵀ, w [n, k]: a linear layer's forward onto its bias.
fn mm_nt_acc(dm: &Dims, dst: &mut [f32], x: &Saved, w: &[f32], (m, n, k): (usize, usize, usize)) {
    let dst = as_uninit(dst);
    match x {
        Saved::F32(x) => dm.gemm((m, n, k), dst, true, (x, k, 1), (w, 1, k)),
        Saved::Bf16(x) => dm.gemm_bf16((m, n, k), dst, true, (x, k, 1), (w, 1, k)),
    }
}

/// dy [m, k] · w [k, n] -> new [m, n]: a linear layer's input gradient.
fn mm_nn(dm: &Dims, dy: &[f32], w: &[f32], (m, n, k): (usize, usize, usize)) -> Vec<f32> {
    filled(m * n, |d| {
        dm.gemm((m, n, k), d, false, (dy, k, 1), (w, n, 1))
    })
}

/// dst [m, n] += dyᵀ · x with dy [k, m], x [k, n]: a linear layer's weight gradient.
fn mm_tn_acc(dm: &Dims, dst: &mut [f32], dy: &[f32], x: &Saved, (m, n, k): (usize, usize, usize)) {
    let dst = as_uninit(dst);
    match x {
        Saved::F32(x) => dm.gemm((m, n, k), dst, true, (dy, 1, m), (x, n, 1)),
        Saved::Bf16(x) => dm.gemm_bf16((m, n, k), dst, true, (dy, 1, m), (x, n, 1)),
    }
}

// ---------------------------------------------------------------------------------------
// Element-wise passes, parallel over fixed row blocks.

/// out [N, n] = bias broadcast over rows (+ residual [N, n]): the initial value a
/// linear layer's gemm then adds x · Wᵀ to.
fn bias_init(bias: &[f32], residual: Option<&[f32]>, rows: usize) -> Vec<f32> {
    let n = bias.len();
    filled(rows * n, |out| match residual {
        None => out.par_chunks_mut(ROWS_PER_TASK * n).for_each(|o| {
            for r in o.chunks_exact_mut(n) {
                r.write_copy_of_slice(bias);
            }
        }),
        Some(res) => out
            .par_chunks_mut(ROWS_PER_TASK * n)
            .zip(res.par_chunks(ROWS_PER_TASK * n))
            .for_each(|(o, x)| {
                for (r, xr) in o.chunks_exact_mut(n).zip(x.chunks_exact(n)) {
                    for ((o, &x), &b) in r.iter_mut().zip(xr).zip(bias) {
                        o.write(x + b);
                    }
                }
            }),
    })
}

/// out [n] += Σ_rows dy [rows, n]: a bias gradient. Per-block partial sums, added in
/// block order.
fn add_colsum(out: &mut [f32], dy: &[f32]) {
    let n = out.len();
    let parts: Vec<Vec<f32>> = dy
        .par_chunks(ROWS_PER_TASK * n)
        .map(|blk| {
            let mut p = vec![0f32; n];
            for r in blk.chunks_exact(n) {
                for (a, &x) in p.iter_mut().zip(r) {
                    *a += x;
                }
            }
            p
        })
        .collect();
    for p in parts {
        for (o, x) in out.iter_mut().zip(p) {
            *o += x;
        }
    }
}

/// dst += src, element-wise.
fn add_into(dst: &mut [f32], src: &[f32]) {
    dst.par_chunks_mut(1 << 15)
        .zip(src.par_chunks(1 << 15))
        .for_each(|(d, s)| {
            for (d, &s) in d.iter_mut().zip(s) {
                *d += s;
            }
        });
}

/// Rows [N, S·C] (row b·T + t, column s·C + h·D + e) -> S x [B, H, T, D].
fn rows_to_heads(dm: &Dims, src: &[f32], s_parts: usize) -> Vec<f32> {
    let (b, t, c, h, d) = (dm.b, dm.t, dm.c, dm.h, dm.d());
    let width = s_parts * c;
    // One task per (s, b): a contiguous [H, T, D] block of the output, all written.
    filled(s_parts * b * c * t, |out| {
        out.par_chunks_mut(h * t * d)
            .enumerate()
            .for_each(|(sb, dst)| {
                let (s, bi) = (sb / b, sb % b);
                for hi in 0..h {
                    for ti in 0..t {
                        let from = (bi * t + ti) * width + s * c + hi * d;
                        let to = (hi * t + ti) * d;
                        dst[to..to + d].write_copy_of_slice(&src[from..from + d]);
                    }
                }
            })
    })
}

/// S parts of [B, H, T, D] -> rows [N, S·C] (the inverse of [`rows_to_heads`]), stored
/// as `Y`.
fn heads_to_rows<Y: Stored<f32>>(dm: &Dims, parts: &[&[f32]]) -> Vec<Y> {
    let (t, c, h, d) = (dm.t, dm.c, dm.h, dm.d());
    let width = parts.len() * c;
    // One task per batch element: its T rows of the output, all written.
    filled(dm.n * width, |out| {
        out.par_chunks_mut(t * width)
            .enumerate()
            .for_each(|(bi, dst)| {
                for (s, src) in parts.iter().enumerate() {
                    for hi in 0..h {
                        for ti in 0..t {
                            let from = ((bi * h + hi) * t + ti) * d;
                            let to = ti * width + s * c + hi * d;
                            let (o, x) = (&mut dst[to..to + d], &src[from..from + d]);
                            for (o, &x) in o.iter_mut().zip(x) {
                                o.write(Y::from_real(x));
                            }
                        }
                    }
                }
            })
    })
}

// ---------------------------------------------------------------------------------------
// Layers: forward/backward pairs.

/// x [N, C] = wte[idx] + wpe[t] (rotary positions: wte[idx]). wte [V, C], wpe [block, C].
fn embed(dm: &Dims, idx: &[u32], wte: &[f32], wpe: Option<&[f32]>) -> Vec<f32> {
    let c = dm.c;
    filled(dm.n * c, |x| {
        x.par_chunks_mut(c).enumerate().for_each(|(r, row)| {
            let (tok, pos) = (idx[r] as usize, r % dm.t);
            let tok_row = &wte[tok * c..(tok + 1) * c];
            match wpe {
                Some(wpe) => {
                    for ((o, &a), &p) in row
                        .iter_mut()
                        .zip(tok_row)
                        .zip(&wpe[pos * c..(pos + 1) * c])
                    {
                        o.write(a + p);
                    }
                }
                None => {
                    row.write_copy_of_slice(tok_row);
                }
            }
        })
    })
}

/// dwte[idx[r]] += dx[r] (rows in order: deterministic), dwpe[t] += Σ_b dx[b, t].
fn embed_backward(dm: &Dims, idx: &[u32], dx: &[f32], dwte: &mut [f32], dwpe: Option<&mut [f32]>) {
    let c = dm.c;
    {
        for (r, &tok) in idx.iter().enumerate() {
            let tok = tok as usize;
            for (g, &x) in dwte[tok * c..(tok + 1) * c]
                .iter_mut()
                .zip(&dx[r * c..(r + 1) * c])
            {
                *g += x;
            }
        }
    }
    let Some(dwpe) = dwpe else {
        return;
    };
    dwpe[..dm.t * c]
        .par_chunks_mut(c)
        .enumerate()
        .for_each(|(ti, g)| {
            for bi in 0..dm.b {
                let r = bi * dm.t + ti;
                for (g, &x) in g.iter_mut().zip(&dx[r * c..(r + 1) * c]) {
                    *g += x;
                }
            }
        });
}

/// What a block's backward needs from its forward.
struct BlockActs {
    /// Block input [N, C].
    x: Vec<f32>,
    /// LN1 output [N, C] and its row statistics [N].
    ln1: (Saved, Vec<f32>, Vec<f32>),
    /// q, k, v [3, B, H, T, D].
    qkv: Vec<f32>,
    /// Attention output [B, H, T, D] and log-sum-exp [B, H, T].
    att: Vec<f32>,
    lse: Vec<f32>,
    /// att with the heads side by side [N, C].
    atty: Saved,
    /// x + attention [N, C].
    x2: Vec<f32>,
    ln2: (Saved, Vec<f32>, Vec<f32>),
    /// Before GELU [N, 4C], and after.
    fc: Vec<f32>,
    act: Saved,
}

/// One block: x [N, C] -> ([saved activations], out [N, C]).
fn block_forward(dm: &Dims, w: &Block<&[f32]>, x: Vec<f32>) -> (BlockActs, Vec<f32>) {
    let (n, c) = (dm.n, dm.c);
    let (b, h, t, d) = (dm.b, dm.h, dm.t, dm.d());
    let ln1 = ln_forward(dm, &x, &w.ln_1); // [N, C]
    let mut qkv_rows = bias_init(w.c_attn.bias, None, n); // [N, 3C]
    mm_nt_acc(dm, &mut qkv_rows, &ln1.0, w.c_attn.weight, (n, 3 * c, c)); // [N, C] x [C, 3C]
    let mut qkv = rows_to_heads(dm, &qkv_rows, 3); // [3, B, H, T, D]
    drop(qkv_rows);
    let part = b * h * t * d;
    if let Some(tb) = dm.rope {
        rope::rotate_in_place(&mut qkv[..2 * part], tb, false); // q and k, [2·B·H, T, D]
    }
    let (q, k, v) = (&qkv[..part], &qkv[part..2 * part], &qkv[2 * part..]);
    let (att, lse) = attn::self_attention_forward_f32((b * h, t, d), true, q, k, v); // [B, H, T, D]
    let atty = dm.saved(
        || heads_to_rows::<f32>(dm, &[&att]),
        || heads_to_rows::<bf16>(dm, &[&att]),
    ); // [N, C]
    let mut x2 = bias_init(w.c_proj.bias, Some(&x), n); // [N, C]
    mm_nt_acc(dm, &mut x2, &atty, w.c_proj.weight, (n, c, c)); // x + [N, C] x [C, C]
    let ln2 = ln_forward(dm, &x2, &w.ln_2);
    let mut fc = bias_init(w.c_fc.bias, None, n); // [N, 4C]
    mm_nt_acc(dm, &mut fc, &ln2.0, w.c_fc.weight, (n, 4 * c, c)); // [N, C] x [C, 4C]
    let act = dm.saved(|| gelu::forward(&fc), || gelu::forward_as(&fc)); // [N, 4C]
    let mut out = bias_init(w.mlp_proj.bias, Some(&x2), n); // [N, C]
    mm_nt_acc(dm, &mut out, &act, w.mlp_proj.weight, (n, c, 4 * c)); // x2 + [N, 4C] x [4C, C]
    let acts = BlockActs {
        x,
        ln1,
        qkv,
        att,
        lse,
        atty,
        x2,
        ln2,
        fc,
        act,
    };
    (acts, out)
}

/// One block backward: d(out) [N, C] -> d(x) [N, C]; parameter gradients added into `g`.
fn block_backward(
    dm: &Dims,
    w: &Block<&[f32]>,
    a: BlockActs,
    dout: Vec<f32>,
    g: &mut Block<&mut Vec<f32>>,
) -> Vec<f32> {
    let (n, c) = (dm.n, dm.c);
    let (b, h, t, d) = (dm.b, dm.h, dm.t, dm.d());
    // MLP: out = x2 + act · W_mpᵀ + b_mp
    mm_tn_acc(dm, g.mlp_proj.weight, &dout, &a.act, (c, 4 * c, n)); // [C, N] x [N, 4C]
    add_colsum(g.mlp_proj.bias, &dout);
    let dact = mm_nn(dm, &dout, w.mlp_proj.weight, (n, 4 * c, c)); // [N, C] x [C, 4C]
    drop(a.act);
    let dfc = gelu::backward(&a.fc, &dact); // [N, 4C]
    drop((dact, a.fc));
    mm_tn_acc(dm, g.c_fc.weight, &dfc, &a.ln2.0, (4 * c, c, n)); // [4C, N] x [N, C]
    add_colsum(g.c_fc.bias, &dfc);
    let dln2 = mm_nn(dm, &dfc, w.c_fc.weight, (n, c, 4 * c)); // [N, 4C] x [4C, C]
    drop(dfc);
    let stats = (a.ln2.1, a.ln2.2);
    let mut dx2 = ln_backward(&a.x2, &dln2, w.ln_2.weight, &stats, &mut g.ln_2);
    add_into(&mut dx2, &dout); // the residual path
    drop((dout, dln2, a.x2, a.ln2.0));
    // Attention: x2 = x + atty · W_projᵀ + b_proj
    mm_tn_acc(dm, g.c_proj.weight, &dx2, &a.atty, (c, c, n)); // [C, N] x [N, C]
    add_colsum(g.c_proj.bias, &dx2);
    let datty = mm_nn(dm, &dx2, w.c_proj.weight, (n, c, c)); // [N, C] x [C, C]
    let datt = rows_to_heads(dm, &datty, 1); // [B, H, T, D]
    drop(datty);
    let part = b * h * t * d;
    let (q, k, v) = (&a.qkv[..part], &a.qkv[part..2 * part], &a.qkv[2 * part..]);
    let (mut dq, mut dk, dv) =
        attn::self_attention_backward_f32((b * h, t, d), true, q, k, v, &a.att, &datt, &a.lse);
    if let Some(tb) = dm.rope {
        // Back through the rotation of q and k: the inverse rotation of their gradients.
        rope::rotate_in_place(&mut dq, tb, true);
        rope::rotate_in_place(&mut dk, tb, true);
    }
    drop((datt, a.att, a.lse, a.qkv));
    let dqkv = heads_to_rows(dm, &[&dq, &dk, &dv]); // [N, 3C]
    drop((dq, dk, dv));
    mm_tn_acc(dm, g.c_attn.weight, &dqkv, &a.ln1.0, (3 * c, c, n)); // [3C, N] x [N, C]
    add_colsum(g.c_attn.bias, &dqkv);
    let dln1 = mm_nn(dm, &dqkv, w.c_attn.weight, (n, c, 3 * c)); // [N, 3C] x [3C, C]
    drop(dqkv);
    let stats = (a.ln1.1, a.ln1.2);
    let mut dx = ln_backward(&a.x, &dln1, w.ln_1.weight, &stats, &mut g.ln_1);
    add_into(&mut dx, &dx2); // the residual path
    dx
}

/// LayerNorm forward of x [N, C], its output saved for the products it feeds: (y [N, C],
/// mean [N], rstd [N]).
fn ln_forward(dm: &Dims, x: &[f32], a: &Affine<&[f32]>) -> (Saved, Vec<f32>, Vec<f32>) {
    if dm.store_bf16 {
        let (y, mean, rstd) = layer_norm::forward_as(x, a.weight, a.bias, LN_EPS);
        (Saved::Bf16(y), mean, rstd)
    } else {
        let (y, mean, rstd) = layer_norm::forward(x, a.weight, a.bias, LN_EPS);
        (Saved::F32(y), mean, rstd)
    }
}

/// LayerNorm backward from x [N, C], dy [N, C], the gain and the forward's (mean, rstd)
/// [N]: returns dx [N, C] and adds d(gain), d(bias) into `g`.
fn ln_backward(
    x: &[f32],
    dy: &[f32],
    gain: &[f32],
    (mean, rstd): &(Vec<f32>, Vec<f32>),
    g: &mut Affine<&mut Vec<f32>>,
) -> Vec<f32> {
    let (dx, dg, db) = layer_norm::backward(x, dy, gain, mean, rstd, true);
    add_into(g.weight, &dg);
    add_into(g.bias, &db);
    dx.expect("asked for dx")
}

/// The tied output head fused with the loss (`loss::head`, in row chunks, with this
/// step's gemm): returns (loss, dh [N, C]) and adds dwte [V, C] into `dwte`.
fn head(
    dm: &Dims,
    hs: &[f32],
    wte: &[f32],
    targets: &[u32],
    opts: &CrossEntropyOptions,
    dwte: &mut [f32],
) -> std::result::Result<(f64, Vec<f32>), HeadError> {
    let gemm = |shape, dst: &mut [MaybeUninit<f32>], acc, a: Operand, b: Operand| {
        dm.gemm(shape, dst, acc, a, b)
    };
    tied_head((dm.n, dm.c, dm.v), hs, wte, targets, opts, dwte, gemm)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{GptConfig, Positions};
    use candle_core::Device;

    /// Storing the product-only activations in bf16 changes no bit of the bf16 step:
    /// loss and every gradient equal those of the same step storing them in f32 (odd
    /// shapes, learned and rotary positions). In the products, a stored bf16 factor is
    /// its f32 value rounded as the packer would round it.
    #[test]
    fn bf16_activations_give_the_bits_of_f32_ones_under_bf16_products() {
        for positions in [Positions::Learned, Positions::Rotary] {
            let cfg = GptConfig {
                vocab_size: 203,
                block_size: 80,
                n_layer: 2,
                n_head: 2,
                n_embd: 48,
                positions,
            };
            let model = Gpt::new(&cfg, 3, &Device::Cpu).unwrap();
            let (b, t) = (3, 37);
            let x: Vec<u32> = (0..b * t).map(|i| (i * 89 % 203) as u32).collect();
            let y: Vec<u32> = (0..b * t).map(|i| (i * 53 % 203) as u32).collect();
            let opts = CrossEntropyOptions::default();
            let run = |store_bf16| {
                let mut g = zero_grads(&model);
                let out = step(
                    &model,
                    &x,
                    &y,
                    (b, t),
                    &opts,
                    &mut g,
                    (Precision::Bf16, store_bf16),
                );
                (out.unwrap().loss.to_bits(), g)
            };
            let (stored_f32, stored_bf16) = (run(false), run(true));
            assert_eq!(stored_f32.0, stored_bf16.0, "{positions:?}: loss");
            for (i, (a, b)) in stored_f32.1.iter().zip(&stored_bf16.1).enumerate() {
                let same = a.iter().zip(b).all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same, "{positions:?}: gradient {i} differs");
            }
        }
    }
}
