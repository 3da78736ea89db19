//! The GPT decoder, top to bottom in the order of the math (nanoGPT's `model.py`).
//!
//! Notation: B batch, T context length, C model width, H heads, D head width (C / H),
//! L layers, V vocabulary, N = B·T rows of the loss.
//!
//! ```text
//! x = wte[idx] + wpe[pos]   (rotary positions: wte[idx])  [B, T, C]
//! L times:  x = x + attn(ln_1(x));  x = x + mlp(ln_2(x))  [B, T, C]
//! h = ln_f(x)                                             [B, T, C]
//! logits = h · wteᵀ (tied head), loss = cross_entropy     [N, V]
//! ```
//!
//! Parameters are plain `Var`s in the fixed order of `params` (which names them: wte,
//! wpe, blocks[l].c_attn, ...), with nanoGPT's state-dict names, so that checkpoints
//! are ordinary safetensors files.

pub mod init;
pub mod native;
pub mod params;

use crate::attention;
use crate::kernels;
use crate::loss::{self, CrossEntropyOptions};
use candle_core::{DType, Device, IndexOp, Result, Tensor, Var};
use params::{Affine, Block, Params};
use serde::{Deserialize, Serialize};

/// How the model knows where a token is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Positions {
    /// A learned embedding per position, added to the token's (GPT-2): `wpe`.
    #[default]
    Learned,
    /// Rotary embeddings (RoFormer): q and k of every head rotated by an angle
    /// proportional to the position, so attention scores depend on the distance
    /// between two tokens, not on where they are. No parameters.
    Rotary,
}

/// The precision of the training step's matrix products (`--dtype`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// f32 products (the gemm crate).
    #[default]
    F32,
    /// Both factors rounded to bf16, products summed in f32
    /// (`kernels::gemm_bf16`); the native step stores the activations that only feed
    /// products in that bf16; weights, the other activations, gradients and the loss
    /// stay f32.
    Bf16,
}

impl Precision {
    /// The name `--dtype` and the config use.
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        }
    }
}

/// The shape of a GPT.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GptConfig {
    /// V: 256 for the byte tokenizer.
    pub vocab_size: usize,
    /// T: the longest context the model sees (learned positions go this far).
    pub block_size: usize,
    /// L.
    pub n_layer: usize,
    /// H.
    pub n_head: usize,
    /// C.
    pub n_embd: usize,
    /// Learned or rotary positions (absent in configs and checkpoints written before
    /// rotary existed: learned; `config_file` does the same for a whole `[model]`
    /// table).
    #[serde(default)]
    pub positions: Positions,
}

impl GptConfig {
    /// Checks the shape against the documented ranges
    /// ([`crate::limits::RANGES`]); every error names the offending field.
    pub fn validate(&self) -> anyhow::Result<()> {
        use crate::limits::check_range;
        for (name, v) in [
            ("vocab_size", self.vocab_size),
            ("block_size", self.block_size),
            ("n_layer", self.n_layer),
            ("n_head", self.n_head),
            ("n_embd", self.n_embd),
        ] {
            check_range(name, v as f64, &v.to_string())?;
        }
        anyhow::ensure!(
            self.n_embd.is_multiple_of(self.n_head),
            "heads ({}) must divide the width ({})",
            self.n_head,
            self.n_embd
        );
        anyhow::ensure!(
            self.positions == Positions::Learned || self.head_dim().is_multiple_of(2),
            "rotary positions rotate pairs of a head's dimensions: the head width {} \
             (width / heads) must be even",
            self.head_dim()
        );
        Ok(())
    }

    /// D.
    pub fn head_dim(&self) -> usize {
        self.n_embd / self.n_head
    }

    /// Every parameter's name and shape, in the model's fixed order (see [`params`]).
    pub fn param_shapes(&self) -> Vec<(String, Vec<usize>)> {
        self.layout()
            .into_flat()
            .into_iter()
            .map(|s| (s.name, s.shape))
            .collect()
    }

    /// Number of scalars in all parameters.
    pub fn num_params(&self) -> usize {
        self.param_shapes()
            .iter()
            .map(|(_, s)| s.iter().product::<usize>())
            .sum()
    }

    /// Training FLOPs per token (forward + backward), PaLM's convention: the model's
    /// FLOPs, not the kernels' (no recomputation). [`Self::matmul_flops_per_token`] plus
    /// 6·L·C·T for the attention scores and weighted sum over the causal half only (a
    /// query at position t meets t + 1 keys, T/2 on average: 2·C·T forward per layer,
    /// twice that backward). nanoGPT's 12·L·C·T counts the masked half too, which the
    /// fused kernel skips; the kernel's backward also recomputes the scores, which is
    /// not counted.
    pub fn flops_per_token(&self) -> f64 {
        self.matmul_flops_per_token() + 6.0 * (self.n_layer * self.n_embd * self.block_size) as f64
    }

    /// The matrix products' FLOPs per token: 6 per weight that multiplies (2 forward,
    /// 2 for the input's gradient, 2 for the weight's): the blocks' matrices and the
    /// tied head. Not biases, gains or position embeddings, which only add, and not
    /// the embedding lookup, a gather.
    pub fn matmul_flops_per_token(&self) -> f64 {
        let weights: usize = self
            .layout()
            .into_flat()
            .iter()
            .filter(|s| s.role.is_matrix() || s.role == params::Role::TokenEmbedding)
            .map(|s| s.shape.iter().product::<usize>())
            .sum();
        6.0 * weights as f64
    }
}

const LN_EPS: f64 = 1e-5;

/// Keys and values of the positions seen so far, one pair per layer: [B, H, Tk, D].
#[derive(Default)]
pub struct KvCache {
    layers: Vec<(Tensor, Tensor)>,
}

impl KvCache {
    pub fn new() -> Self {
        Self::default()
    }
    /// Positions held (Tk).
    pub fn len(&self) -> usize {
        self.layers
            .first()
            .map(|(k, _)| k.dim(2).unwrap_or(0))
            .unwrap_or(0)
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn clear(&mut self) {
        self.layers.clear()
    }
}

/// A GPT: its config and its parameters.
pub struct Gpt {
    pub config: GptConfig,
    /// Use the composed reference kernels (attention, LayerNorm, GELU, loss) instead of
    /// the fused ones: for gradient checks in f64 and for comparisons.
    pub reference_kernels: bool,
    /// (name, parameter) in `GptConfig::param_shapes` order.
    params: Vec<(String, Var)>,
    /// For a [`Gpt::frozen`] view: the parameters detached from autograd (same storage).
    frozen: Option<Vec<Tensor>>,
}

/// x [..., in] · wᵀ [in, out] + b [out] -> [..., out], for 3-D x flattened to 2-D so the
/// matmul is one GEMM.
fn linear(x: &Tensor, Affine { weight: w, bias: b }: &Affine<&Tensor>) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    let (rows, inp) = (
        dims[..dims.len() - 1].iter().product::<usize>(),
        dims[dims.len() - 1],
    );
    let out = w.dim(0)?;
    let y = x.reshape((rows, inp))?.matmul(&w.t()?)?; // [rows, in] x [in, out] -> [rows, out]
    let y = y.broadcast_add(b)?;
    let mut out_dims = dims;
    *out_dims.last_mut().expect("non-empty") = out;
    y.reshape(out_dims)
}

impl Gpt {
    /// A freshly initialised model (GPT-2 initialisation, see `init`), deterministic in
    /// `seed`.
    pub fn new(config: &GptConfig, seed: u64, device: &Device) -> anyhow::Result<Self> {
        config.validate()?;
        let tensors = init::gpt2_init(config, seed, device)?;
        Self::from_tensors(config, tensors)
    }

    /// Builds a model from named tensors, checking that each expected parameter is
    /// present with the expected shape.
    pub fn from_tensors(
        config: &GptConfig,
        mut tensors: std::collections::HashMap<String, Tensor>,
    ) -> anyhow::Result<Self> {
        config.validate()?;
        let mut params = Vec::new();
        let want = tensors.get("wte").map(|t| t.dtype()).unwrap_or(DType::F32);
        for (name, shape) in config.param_shapes() {
            let t = tensors
                .remove(&name)
                .ok_or_else(|| anyhow::anyhow!("parameter {name} is missing"))?;
            anyhow::ensure!(
                t.dims() == shape.as_slice(),
                "parameter {name} has shape {:?}, but the config expects {:?}",
                t.dims(),
                shape
            );
            anyhow::ensure!(
                t.dtype() == want && matches!(want, DType::F32 | DType::F64),
                "parameter {name} has dtype {:?}, expected {want:?} (all f32, or all f64)",
                t.dtype()
            );
            params.push((name, Var::from_tensor(&t)?));
        }
        if let Some(extra) = tensors.keys().next() {
            anyhow::bail!("unexpected parameter {extra} (the config has no such tensor)");
        }
        Ok(Self {
            config: config.clone(),
            reference_kernels: false,
            params,
            frozen: None,
        })
    }

    /// The same model (sharing the parameters' storage, so it sees every later update)
    /// for computing without gradients: its forward records no graph, so evaluation
    /// and sampling free each activation when the next layer has used it, and the loss
    /// computes no parameter gradients. Through the trainable model, an evaluation
    /// batch held every activation of the forward until it ended, above a training
    /// step's peak (BENCHMARKS.md, "Measurements behind the code").
    pub fn frozen(&self) -> Self {
        Self {
            config: self.config.clone(),
            reference_kernels: self.reference_kernels,
            params: self.params.clone(),
            frozen: Some(
                self.params
                    .iter()
                    .map(|(_, v)| v.as_detached_tensor())
                    .collect(),
            ),
        }
    }

    /// (name, parameter) pairs in a fixed order. On a [`Gpt::frozen`] view these are
    /// still the live `Var`s, but its forward uses detached copies: train through the
    /// model itself, never through a frozen view (its losses give no gradients).
    pub fn params(&self) -> &[(String, Var)] {
        &self.params
    }

    /// The parameters as a name -> tensor map (for saving).
    pub fn named_tensors(&self) -> std::collections::HashMap<String, Tensor> {
        self.params
            .iter()
            .map(|(n, v)| (n.clone(), v.as_tensor().clone()))
            .collect()
    }

    /// The same model computed in f64 with the reference kernels (gradient checks).
    pub fn to_f64_reference(&self) -> anyhow::Result<Self> {
        let tensors = self
            .params
            .iter()
            .map(|(n, v)| Ok((n.clone(), v.as_tensor().to_dtype(DType::F64)?)))
            .collect::<Result<_>>()?;
        let mut m = Self::from_tensors(&self.config, tensors)?;
        m.reference_kernels = true;
        Ok(m)
    }

    fn layer_norm(
        &self,
        x: &Tensor,
        Affine { weight: g, bias: b }: &Affine<&Tensor>,
    ) -> Result<Tensor> {
        if self.reference_kernels {
            kernels::reference::layer_norm(x, g, b, LN_EPS)
        } else {
            kernels::layer_norm(x, g, b, LN_EPS)
        }
    }

    fn gelu(&self, x: &Tensor) -> Result<Tensor> {
        if self.reference_kernels {
            kernels::reference::gelu(x)
        } else {
            kernels::gelu(x)
        }
    }

    /// The parameters by name: the live tensors, or a frozen view's detached ones.
    fn named(&self) -> Params<&Tensor> {
        let flat: Vec<&Tensor> = match &self.frozen {
            Some(f) => f.iter().collect(),
            None => self.params.iter().map(|(_, v)| v.as_tensor()).collect(),
        };
        Params::from_flat(flat, &self.config).expect("from_tensors checked the layout")
    }

    /// Causal self-attention of one block. x [B, T, C]. With a cache, the T new
    /// positions attend to the cached ones too, and the cache grows by T.
    fn attn(
        &self,
        blk: &Block<&Tensor>,
        x: &Tensor,
        pos0: usize,
        cache: Option<&mut (Tensor, Tensor)>,
    ) -> Result<Tensor> {
        let (b, t, c) = x.dims3()?;
        let (h, d) = (self.config.n_head, self.config.head_dim());
        let qkv = linear(x, &blk.c_attn)?; // [B, T, 3C]
        let qkv = qkv.reshape((b, t, 3, h, d))?.permute((2, 0, 3, 1, 4))?; // [3, B, H, T, D]
        let (q, k, v) = (qkv.i(0)?, qkv.i(1)?, qkv.i(2)?); // each [B, H, T, D]
        let (q, k) = match self.config.positions {
            Positions::Learned => (q, k),
            // Rotated at their absolute positions; cached keys keep their rotation.
            Positions::Rotary => (
                kernels::rope::rope(&q, pos0)?,
                kernels::rope::rope(&k, pos0)?,
            ),
        };
        let y = match cache {
            None if self.reference_kernels => attention::reference::causal_attention(&q, &k, &v)?,
            None => attention::causal_attention(&q, &k, &v)?, // [B, H, T, D]
            Some(kv) => {
                let (k, v) = if kv.0.dim(2)? == 0 {
                    (k.contiguous()?, v.contiguous()?)
                } else {
                    (Tensor::cat(&[&kv.0, &k], 2)?, Tensor::cat(&[&kv.1, &v], 2)?)
                    // [B, H, Tk, D]
                };
                let y = if self.reference_kernels {
                    attention::reference::cached_attention(&q, &k, &v)?
                } else {
                    attention::cached_attention(&q, &k, &v)? // [B, H, T, D]
                };
                *kv = (k, v);
                y
            }
        };
        let y = y.transpose(1, 2)?.reshape((b, t, c))?; // [B, T, H, D] -> [B, T, C]
        linear(&y, &blk.c_proj)
    }

    /// MLP of one block: x [B, T, C] -> [B, T, 4C] -> GELU -> [B, T, C].
    fn mlp(&self, blk: &Block<&Tensor>, x: &Tensor) -> Result<Tensor> {
        let hidden = self.gelu(&linear(x, &blk.c_fc)?)?; // [B, T, 4C]
        linear(&hidden, &blk.mlp_proj) // [B, T, C]
    }

    /// Hidden states after the final LayerNorm: idx [B, T] (u32) -> [B, T, C].
    /// `pos0` is the absolute position of idx[:, 0] (non-zero only with a KV cache).
    fn hidden(&self, idx: &Tensor, pos0: usize, mut cache: Option<&mut KvCache>) -> Result<Tensor> {
        let (b, t) = idx.dims2()?;
        let c = self.config.n_embd;
        if pos0 + t > self.config.block_size {
            candle_core::bail!(
                "sequence of {} positions exceeds the context of {}",
                pos0 + t,
                self.config.block_size
            );
        }
        let w = self.named();
        let tok = w.wte.embedding(&idx.flatten_all()?)?.reshape((b, t, c))?; // [B, T, C]
        let mut x = match w.wpe {
            Some(wpe) => tok.broadcast_add(&wpe.narrow(0, pos0, t)?)?, // + [T, C]
            None => tok,
        };
        if let Some(cache) = cache.as_deref_mut() {
            if cache.layers.is_empty() {
                let (h, d) = (self.config.n_head, self.config.head_dim());
                let empty = Tensor::zeros((b, h, 0, d), x.dtype(), idx.device())?;
                cache.layers = vec![(empty.clone(), empty); self.config.n_layer];
            }
        }
        for (l, blk) in w.blocks.iter().enumerate() {
            let a_in = self.layer_norm(&x, &blk.ln_1)?;
            let kv = cache.as_deref_mut().map(|c| &mut c.layers[l]);
            x = (x + self.attn(blk, &a_in, pos0, kv)?)?;
            let m_in = self.layer_norm(&x, &blk.ln_2)?;
            x = (x + self.mlp(blk, &m_in)?)?;
        }
        self.layer_norm(&x, &w.ln_f)
    }

    /// Mean (or as `opts` says) cross-entropy of next-token prediction.
    /// idx, targets [B, T] (u32).
    pub fn loss(
        &self,
        idx: &Tensor,
        targets: &Tensor,
        opts: &CrossEntropyOptions,
    ) -> Result<Tensor> {
        let (b, t) = idx.dims2()?;
        let h = self
            .hidden(idx, 0, None)?
            .reshape((b * t, self.config.n_embd))?; // [N, C]
        let targets = targets.flatten_all()?; // [N]
        let wte = self.named().wte;
        if self.reference_kernels {
            loss::reference::linear_cross_entropy(&h, wte, &targets, opts)
        } else {
            loss::linear_cross_entropy(&h, wte, &targets, opts)
        }
    }

    /// Logits of every position: idx [B, T] -> [B, T, V]. For tests and tools; training
    /// never materialises these (the loss fuses the head).
    pub fn logits(&self, idx: &Tensor) -> Result<Tensor> {
        let (b, t) = idx.dims2()?;
        let h = self
            .hidden(idx, 0, None)?
            .reshape((b * t, self.config.n_embd))?; // [N, C]
        h.matmul(&self.named().wte.t()?)?
            .reshape((b, t, self.config.vocab_size)) // [N, C] x [C, V]
    }

    /// Logits of the last position after feeding idx [B, Tnew] on top of `cache`:
    /// -> [B, V]. The cache grows by Tnew.
    pub fn forward_cached(&self, idx: &Tensor, cache: &mut KvCache) -> Result<Tensor> {
        let (_b, t) = idx.dims2()?;
        let pos0 = cache.len();
        let h = self.hidden(idx, pos0, Some(cache))?; // [B, Tnew, C]
        let last = h.narrow(1, t - 1, 1)?.squeeze(1)?; // [B, C]
        last.matmul(&self.named().wte.t()?) // [B, C] x [C, V] -> [B, V]
    }
}
