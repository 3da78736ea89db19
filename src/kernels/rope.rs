//! Rotary position embeddings (RoFormer; GPT-NeoX's half-split layout): within a head
//! of width D, dimensions i and i + D/2 form a pair that is rotated by the angle
//! p·θ_i, θ_i = 10000^(-2i/D), where p is the token's position. A query at p and a
//! key at p' then score q·R(p' - p)·k: attention sees how far apart two tokens are,
//! not where they are, which is what counting the characters of a line needs.
//!
//! Two forms: [`rotate_in_place`] on raw [R, T, D] buffers (the native step's q and
//! k, R = B·H), forward and backward (the backward rotates by the negative angle), and
//! [`rope`], composed of candle ops (differentiable, f32 or f64) for the graph model.
//! The angles are computed in f64 once per call and rounded to the element type.

use candle_core::{DType, Device, Result, Tensor, D};
use rayon::prelude::*;

/// The base of the angle frequencies.
pub const BASE: f64 = 10_000.0;

/// cos and sin of p·θ_i for p in pos0..pos0+t and i in 0..D/2, each [t, D/2].
pub fn tables(pos0: usize, t: usize, d: usize) -> (Vec<f64>, Vec<f64>) {
    let half = d / 2;
    let mut cos = Vec::with_capacity(t * half);
    let mut sin = Vec::with_capacity(t * half);
    for p in pos0..pos0 + t {
        for i in 0..half {
            let theta = BASE.powf(-2.0 * i as f64 / d as f64);
            let (s, c) = (p as f64 * theta).sin_cos();
            cos.push(c);
            sin.push(s);
        }
    }
    (cos, sin)
}

/// The angles of positions 0..T for heads of width D, in f32: computed once per step
/// and shared by every layer's forward and backward rotation.
pub struct Tables {
    t: usize,
    d: usize,
    cos: Vec<f32>,
    sin: Vec<f32>,
}

impl Tables {
    pub fn new(t: usize, d: usize) -> Self {
        assert!(d.is_multiple_of(2), "rope: odd head width {d}");
        let (cos, sin) = tables(0, t, d);
        Self {
            t,
            d,
            cos: cos.into_iter().map(|v| v as f32).collect(),
            sin: sin.into_iter().map(|v| v as f32).collect(),
        }
    }
}

/// Rotates every head row of x [R, T, D] (positions 0..T) in place; `inverse` rotates
/// by the negative angles (the backward: the gradient of a rotation is the inverse
/// rotation of the output's gradient).
pub fn rotate_in_place(x: &mut [f32], tb: &Tables, inverse: bool) {
    let (t, d) = (tb.t, tb.d);
    assert!(x.len().is_multiple_of(t * d), "rope: x is not [R, T, D]");
    let half = d / 2;
    // The inverse rotation is the same with sin negated (exactly, in f32).
    let sign = if inverse { -1.0f32 } else { 1.0 };
    x.par_chunks_mut(t * d).for_each(|head| {
        for (p, row) in head.chunks_exact_mut(d).enumerate() {
            let (c, s) = (
                &tb.cos[p * half..(p + 1) * half],
                &tb.sin[p * half..(p + 1) * half],
            );
            let (a, b) = row.split_at_mut(half);
            for i in 0..half {
                let (x1, x2, s) = (a[i], b[i], sign * s[i]);
                a[i] = x1 * c[i] - x2 * s;
                b[i] = x2 * c[i] + x1 * s;
            }
        }
    });
}

/// The angle tables as [T, D/2] tensors of `dtype` on `device`.
fn table_tensors(
    pos0: usize,
    t: usize,
    d: usize,
    dtype: DType,
    device: &Device,
) -> Result<(Tensor, Tensor)> {
    let (cos, sin) = tables(pos0, t, d);
    let cos = Tensor::from_vec(cos, (t, d / 2), &Device::Cpu)?;
    let sin = Tensor::from_vec(sin, (t, d / 2), &Device::Cpu)?;
    Ok((
        cos.to_dtype(dtype)?.to_device(device)?,
        sin.to_dtype(dtype)?.to_device(device)?,
    ))
}

/// x [B, H, T, D] rotated for positions pos0..pos0+T, composed of differentiable candle
/// ops: y1 = x1·cos - x2·sin, y2 = x2·cos + x1·sin with x1, x2 the two halves of D.
pub fn rope(x: &Tensor, pos0: usize) -> Result<Tensor> {
    let (_, _, t, d) = x.dims4()?;
    let half = d / 2;
    let (cos, sin) = table_tensors(pos0, t, d, x.dtype(), x.device())?; // [T, D/2]
    let x1 = x.narrow(D::Minus1, 0, half)?; // [B, H, T, D/2]
    let x2 = x.narrow(D::Minus1, half, half)?;
    let y1 = (x1.broadcast_mul(&cos)? - x2.broadcast_mul(&sin)?)?;
    let y2 = (x2.broadcast_mul(&cos)? + x1.broadcast_mul(&sin)?)?;
    Tensor::cat(&[&y1, &y2], D::Minus1) // [B, H, T, D]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_rotation_matches_the_composed_one_and_inverts() {
        let (r, t, d) = (3, 5, 6);
        let x: Vec<f32> = (0..r * t * d)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 17.0)
            .collect();
        let mut y = x.clone();
        rotate_in_place(&mut y, &Tables::new(t, d), false);
        let xt = Tensor::from_vec(x.clone(), (1, r, t, d), &Device::Cpu).unwrap();
        let want: Vec<f32> = rope(&xt, 0)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        for (a, b) in y.iter().zip(&want) {
            assert!((a - b).abs() <= 1e-6 * (1.0 + b.abs()), "{a} vs {b}");
        }
        // Rotations keep each pair's length, and the inverse undoes the forward.
        let mut back = y.clone();
        rotate_in_place(&mut back, &Tables::new(t, d), true);
        for (a, b) in back.iter().zip(&x) {
            assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "{a} vs {b}");
        }
        // Position 0 is the identity.
        assert_eq!(y[..d], x[..d]);
    }

    #[test]
    fn scores_depend_on_the_distance_only() {
        // q·k after rotation at positions (p, p') equals that at (p + s, p' + s).
        let d = 8;
        let q = Tensor::from_vec(
            (0..d).map(|i| i as f64 * 0.3 - 1.0).collect::<Vec<_>>(),
            (1, 1, 1, d),
            &Device::Cpu,
        )
        .unwrap();
        let k = Tensor::from_vec(
            (0..d).map(|i| 1.0 - i as f64 * 0.2).collect::<Vec<_>>(),
            (1, 1, 1, d),
            &Device::Cpu,
        )
        .unwrap();
        let score = |pq: usize, pk: usize| -> f64 {
            let a = rope(&q, pq).unwrap();
            let b = rope(&k, pk).unwrap();
            (a * b).unwrap().sum_all().unwrap().to_scalar().unwrap()
        };
        for s in [1, 7, 100] {
            assert!((score(3, 1) - score(3 + s, 1 + s)).abs() < 1e-9);
        }
        assert!((score(3, 1) - score(3, 2)).abs() > 1e-3);
    }
}
