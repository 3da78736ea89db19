//! Borrowing the contiguous data of candle CPU tensors as plain slices, which is what
//! the kernels work on.

use candle_core::{bail, Context, CpuStorage, Layout, Result, Storage, Tensor, WithDType};

/// The contiguous slice a CPU storage holds for `layout`, or an error if the layout
/// is strided (callers make inputs contiguous before applying the op).
pub(crate) fn contiguous_slice<'a, T: WithDType>(
    s: &'a CpuStorage,
    layout: &Layout,
) -> Result<&'a [T]> {
    let (start, end) = layout
        .contiguous_offsets()
        .context("fused kernel: input is not contiguous")?;
    Ok(&s.as_slice::<T>()?[start..end])
}

/// [`contiguous_slice`] of a tensor's storage, which must be on the CPU.
pub(crate) fn storage_slice<'a, T: WithDType>(s: &'a Storage, layout: &Layout) -> Result<&'a [T]> {
    let Storage::Cpu(cpu) = s else {
        bail!("fused kernel: only CPU tensors are supported")
    };
    contiguous_slice::<T>(cpu, layout)
}

/// Calls `f` with the contiguous CPU data of `t` (copied only if `t` is strided).
pub(crate) fn with_slice<T: WithDType, R>(
    t: &Tensor,
    f: impl FnOnce(&[T]) -> Result<R>,
) -> Result<R> {
    let t = t.detach().contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    f(storage_slice::<T>(&storage, layout)?)
}
