//! tinylm: a tiny byte-level GPT trainer whose core is the loss computation.
//!
//! Data flows one way: `tokenizer` -> `data` -> `model` (which calls `attention`,
//! `kernels` and `loss`) -> `train`. `sample` runs the model forward with a KV cache;
//! `verse` measures the form of what it writes; `plot` draws a run's metrics; `serve`
//! puts a checkpoint behind an HTTP API. Nothing below `train` knows about files or
//! the command line. The CPU kernels share `cpu` (SIMD level, buffers, storage access)
//! and `fastmath` (the vectorisable exp).
//!
//! Notation used in every shape comment: B batch, T context length, C model width,
//! H heads, D head width (C / H), L layers, V vocabulary, N = B·T rows of the loss.

pub mod attention;
pub mod bench;
pub mod cpu;
pub mod data;
pub mod device;
pub mod eval;
mod fastmath;
pub mod kernels;
pub mod limits;
pub mod loss;
pub mod model;
pub mod plot;
pub mod sample;
pub mod serve;
pub mod tokenizer;
pub mod train;
pub mod verse;
