//! Fused attention on CPU slices in the FlashAttention-2 manner: [`forward`] keeps
//! only O and the per-row log-sum-exp, [`backward`] recomputes the probabilities tile
//! by tile; neither holds anything that grows with T². [`schedule`] cuts the work into
//! tiles and tasks, [`tile_ops`] holds the arithmetic inside a tile. The candle op over
//! these is `super::fused`; the slice entry points below are for the native training
//! step (`model::native`), which owns its buffers, and for the benchmark.
//!
//! Masking: query row r (0-based within Tq) sits at absolute position r + Tk - Tq and
//! sees keys c <= r + Tk - Tq when causal (Tq = Tk for self-attention; Tq < Tk for the
//! KV cache). Key tiles entirely above a query tile are skipped, and in diagonal tiles
//! only the 16-column chunks that some row of a 4-row block can see are computed.
//!
//! Every tile loop is compiled for the SIMD level of `crate::cpu::simd`; all levels
//! and thread counts give the same bits.

mod backward;
mod forward;
mod schedule;
mod tile_ops;

pub(crate) use backward::backward;
pub(crate) use forward::forward;
pub(crate) use schedule::{Dims, BLOCK_K, BLOCK_Q};
pub(crate) use tile_ops::Elem;

/// Self-attention dims at the default tiles, as the candle op uses them.
fn self_dims(bh: usize, t: usize, d: usize, causal: bool) -> Dims<f32> {
    Dims::new((bh, t, t, d), causal, (BLOCK_Q, BLOCK_K))
}

/// Self-attention of contiguous q, k, v [BH, T, D] (f32) -> (O [BH, T, D], log-sum-exp
/// [BH, T]), exactly what `super::fused::attention` computes for tensors. Causal unless
/// `causal` is false (the benchmark's non-causal comparison).
pub fn self_attention_forward_f32(
    (bh, t, d): (usize, usize, usize),
    causal: bool,
    q: &[f32],
    k: &[f32],
    v: &[f32],
) -> (Vec<f32>, Vec<f32>) {
    assert!(q.len() == bh * t * d && k.len() == q.len() && v.len() == q.len());
    forward(&self_dims(bh, t, d, causal), q, k, v, true)
}

/// The backward of [`self_attention_forward_f32`] given dO: (dQ, dK, dV), each
/// [BH, T, D].
#[allow(clippy::too_many_arguments)]
pub fn self_attention_backward_f32(
    (bh, t, d): (usize, usize, usize),
    causal: bool,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    o: &[f32],
    go: &[f32],
    lse: &[f32],
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let n = bh * t * d;
    assert!(
        [k.len(), v.len(), o.len(), go.len()]
            .iter()
            .all(|&l| l == n)
            && q.len() == n
    );
    assert_eq!(lse.len(), bh * t);
    backward(&self_dims(bh, t, d, causal), q, k, v, o, go, lse)
}
