//! What every CPU kernel (loss, attention, layer kernels, optimizer) shares, none of it
//! a kernel itself: the SIMD level code is compiled for, output buffers written without
//! a zero-fill, slices of candle's CPU storage, and the allocator settings that keep
//! large buffers from being returned to the OS between steps.

mod bf16;
mod buf;
mod malloc;
pub mod simd;
mod storage;

pub(crate) use bf16::{bf16_bits_rne, bf16_bits_rne_ftz, bf16_to_f32};
pub(crate) use buf::{as_uninit, assume_init, uninit_vec};
pub use malloc::{keep_heap_between_steps, tune_glibc_malloc};
pub(crate) use storage::{contiguous_slice, storage_slice, with_slice};
