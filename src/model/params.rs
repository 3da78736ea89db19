//! The GPT's parameters by name: one layout (name, shape, role) in the model's fixed
//! order, and a structure generic over what holds each parameter — a candle tensor, a
//! slice of weights, a gradient buffer, a name — so that the graph model, the native
//! step, initialisation, checkpoints and AdamW's groups all say `blocks[l].c_fc.weight`
//! rather than an index into a flat list.
//!
//! ```text
//! wte                 (V, C)    token embedding, also the output head (tied)
//! wpe                 (T, C)    position embedding (learned positions only; with
//!                               rotary positions there is none)
//! blocks[l], L of them:
//!   ln_1.weight/bias  (C)       LayerNorm before attention
//!   c_attn.weight     (3C, C)   q, k, v projections, stacked
//!   c_attn.bias       (3C)
//!   c_proj.weight     (C, C)    attention output projection (into the residual)
//!   c_proj.bias       (C)
//!   ln_2.weight/bias  (C)       LayerNorm before the MLP
//!   c_fc.weight       (4C, C)   MLP up-projection
//!   c_fc.bias         (4C)
//!   mlp_proj.weight   (C, 4C)   MLP down-projection (into the residual)
//!   mlp_proj.bias     (C)
//! ln_f.weight/bias    (C)       final LayerNorm
//! ```
//!
//! The flat order (the order of [`Params::into_flat`]) is the table's, top to bottom;
//! the names are nanoGPT's state-dict names, so checkpoints are ordinary safetensors
//! files that a PyTorch GPT loads.

use super::{GptConfig, Positions};

/// What a parameter is for: decides its initialisation and its weight decay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// wte: token embedding and (tied) output head.
    TokenEmbedding,
    /// wpe.
    PositionEmbedding,
    /// The matrix of a linear layer that reads the residual stream.
    Matrix,
    /// The matrix of a linear layer that writes into the residual stream (scaled down
    /// at init so the stream's variance does not grow with depth).
    ResidualMatrix,
    /// A linear layer's or a LayerNorm's bias.
    Bias,
    /// A LayerNorm's gain.
    Gain,
}

impl Role {
    /// AdamW decays the matrices of linear layers only: not biases, gains or
    /// embeddings (nanoGPT/minGPT).
    pub fn decays(self) -> bool {
        self.is_matrix()
    }

    /// The matrix of a linear layer (what `--optimizer muon` updates; the tied
    /// embedding is not one).
    pub fn is_matrix(self) -> bool {
        matches!(self, Role::Matrix | Role::ResidualMatrix)
    }
}

/// A weight and its bias: a LayerNorm's (gain, bias) or a linear layer's (matrix, bias).
#[derive(Debug, Clone, PartialEq)]
pub struct Affine<T> {
    pub weight: T,
    pub bias: T,
}

/// One transformer block's parameters (shapes in the module docs).
#[derive(Debug, Clone, PartialEq)]
pub struct Block<T> {
    pub ln_1: Affine<T>,
    pub c_attn: Affine<T>,
    pub c_proj: Affine<T>,
    pub ln_2: Affine<T>,
    pub c_fc: Affine<T>,
    pub mlp_proj: Affine<T>,
}

/// All of a GPT's parameters (shapes in the module docs).
#[derive(Debug, Clone, PartialEq)]
pub struct Params<T> {
    pub wte: T,
    pub wpe: Option<T>,
    pub blocks: Vec<Block<T>>,
    pub ln_f: Affine<T>,
}

/// Name, shape and role of one parameter.
#[derive(Debug, Clone, PartialEq)]
pub struct Spec {
    pub name: String,
    pub shape: Vec<usize>,
    pub role: Role,
}

/// Parameters per block.
pub const PER_BLOCK: usize = 12;

impl<T> Affine<T> {
    fn map<U>(self, f: &mut impl FnMut(T) -> U) -> Affine<U> {
        Affine {
            weight: f(self.weight),
            bias: f(self.bias),
        }
    }
}

impl<T> Block<T> {
    /// The block's parameters in the fixed order.
    pub fn into_flat(self) -> [T; PER_BLOCK] {
        let Block {
            ln_1,
            c_attn,
            c_proj,
            ln_2,
            c_fc,
            mlp_proj,
        } = self;
        [
            ln_1.weight,
            ln_1.bias,
            c_attn.weight,
            c_attn.bias,
            c_proj.weight,
            c_proj.bias,
            ln_2.weight,
            ln_2.bias,
            c_fc.weight,
            c_fc.bias,
            mlp_proj.weight,
            mlp_proj.bias,
        ]
    }

    fn from_iter(it: &mut impl Iterator<Item = T>) -> Option<Self> {
        let mut pair = || {
            Some(Affine {
                weight: it.next()?,
                bias: it.next()?,
            })
        };
        Some(Block {
            ln_1: pair()?,
            c_attn: pair()?,
            c_proj: pair()?,
            ln_2: pair()?,
            c_fc: pair()?,
            mlp_proj: pair()?,
        })
    }

    fn map<U>(self, f: &mut impl FnMut(T) -> U) -> Block<U> {
        Block {
            ln_1: self.ln_1.map(f),
            c_attn: self.c_attn.map(f),
            c_proj: self.c_proj.map(f),
            ln_2: self.ln_2.map(f),
            c_fc: self.c_fc.map(f),
            mlp_proj: self.mlp_proj.map(f),
        }
    }
}

impl<T> Params<T> {
    /// Parameters from values in the fixed order of `config`'s layout; None unless
    /// there are exactly as many as the layout has.
    pub fn from_flat(values: impl IntoIterator<Item = T>, config: &GptConfig) -> Option<Self> {
        let mut it = values.into_iter();
        let wte = it.next()?;
        let wpe = match config.positions {
            Positions::Learned => Some(it.next()?),
            Positions::Rotary => None,
        };
        let blocks = (0..config.n_layer)
            .map(|_| Block::from_iter(&mut it))
            .collect::<Option<Vec<_>>>()?;
        let ln_f = Affine {
            weight: it.next()?,
            bias: it.next()?,
        };
        if it.next().is_some() {
            return None;
        }
        Some(Params {
            wte,
            wpe,
            blocks,
            ln_f,
        })
    }

    /// The parameters in the fixed order.
    pub fn into_flat(self) -> Vec<T> {
        let mut out = Vec::with_capacity(4 + PER_BLOCK * self.blocks.len());
        out.push(self.wte);
        out.extend(self.wpe);
        for b in self.blocks {
            out.extend(b.into_flat());
        }
        out.push(self.ln_f.weight);
        out.push(self.ln_f.bias);
        out
    }

    /// The same structure with `f` applied to every parameter (in the fixed order).
    pub fn map<U>(self, mut f: impl FnMut(T) -> U) -> Params<U> {
        let wte = f(self.wte);
        let wpe = self.wpe.map(&mut f);
        let blocks = self.blocks.into_iter().map(|b| b.map(&mut f)).collect();
        Params {
            wte,
            wpe,
            blocks,
            ln_f: self.ln_f.map(&mut f),
        }
    }
}

impl GptConfig {
    /// Every parameter's name, shape and role.
    pub fn layout(&self) -> Params<Spec> {
        let (c, v, t) = (self.n_embd, self.vocab_size, self.block_size);
        let spec = |name: String, shape: Vec<usize>, role| Spec { name, shape, role };
        let affine = |prefix: &str, weight: Vec<usize>, weight_role, bias: usize| Affine {
            weight: spec(format!("{prefix}.weight"), weight, weight_role),
            bias: spec(format!("{prefix}.bias"), vec![bias], Role::Bias),
        };
        let blocks = (0..self.n_layer)
            .map(|l| Block {
                ln_1: affine(&format!("h.{l}.ln_1"), vec![c], Role::Gain, c),
                c_attn: affine(
                    &format!("h.{l}.attn.c_attn"),
                    vec![3 * c, c],
                    Role::Matrix,
                    3 * c,
                ),
                c_proj: affine(
                    &format!("h.{l}.attn.c_proj"),
                    vec![c, c],
                    Role::ResidualMatrix,
                    c,
                ),
                ln_2: affine(&format!("h.{l}.ln_2"), vec![c], Role::Gain, c),
                c_fc: affine(
                    &format!("h.{l}.mlp.c_fc"),
                    vec![4 * c, c],
                    Role::Matrix,
                    4 * c,
                ),
                mlp_proj: affine(
                    &format!("h.{l}.mlp.c_proj"),
                    vec![c, 4 * c],
                    Role::ResidualMatrix,
                    c,
                ),
            })
            .collect();
        Params {
            wte: spec("wte".into(), vec![v, c], Role::TokenEmbedding),
            wpe: match self.positions {
                Positions::Learned => Some(spec("wpe".into(), vec![t, c], Role::PositionEmbedding)),
                Positions::Rotary => None,
            },
            blocks,
            ln_f: affine("ln_f", vec![c], Role::Gain, c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flat_order_round_trips_and_names_are_nanogpts() {
        let cfg = GptConfig {
            vocab_size: 11,
            block_size: 7,
            n_layer: 3,
            n_head: 2,
            n_embd: 6,
            positions: Positions::Learned,
        };
        let layout = cfg.layout();
        let names: Vec<String> = layout
            .clone()
            .into_flat()
            .into_iter()
            .map(|s| s.name)
            .collect();
        assert_eq!(names.len(), 4 + PER_BLOCK * 3);
        assert_eq!(
            names[..4],
            ["wte", "wpe", "h.0.ln_1.weight", "h.0.ln_1.bias"]
        );
        assert_eq!(
            names[12..14],
            ["h.0.mlp.c_proj.weight", "h.0.mlp.c_proj.bias"]
        );
        assert_eq!(names[names.len() - 2..], ["ln_f.weight", "ln_f.bias"]);
        let back = Params::from_flat(layout.clone().into_flat(), &cfg).unwrap();
        assert_eq!(back, layout);
        assert_eq!(back.blocks[2].c_fc.weight.shape, vec![24, 6]);
        assert_eq!(back.blocks[1].c_proj.weight.role, Role::ResidualMatrix);
        // Other counts are refused.
        for n in [0, 3, 39, 41] {
            assert!(Params::from_flat(0..n, &cfg).is_none(), "{n}");
        }
        // map keeps the order.
        let idx = Params::from_flat(0..40, &cfg).unwrap().map(|i| i * 2);
        assert_eq!(idx.into_flat(), (0..40).map(|i| i * 2).collect::<Vec<_>>());
        // Rotary positions: no wpe, one parameter fewer.
        let rope = GptConfig {
            positions: Positions::Rotary,
            ..cfg
        };
        let names: Vec<String> = rope
            .layout()
            .into_flat()
            .into_iter()
            .map(|s| s.name)
            .collect();
        assert_eq!(names.len(), 3 + PER_BLOCK * 3);
        assert!(!names.iter().any(|n| n == "wpe"));
        assert!(Params::from_flat(0..39, &rope).unwrap().wpe.is_none());
    }
}
