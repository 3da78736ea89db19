//! Output buffers the kernels write without zero-filling them first: outputs are
//! large and written exactly once, so a zero-fill would be a whole extra write pass.

use std::mem::MaybeUninit;

/// A buffer of `n` uninitialised elements. Kernels write every element before
/// [`assume_init`].
pub(crate) fn uninit_vec<T>(n: usize) -> Vec<MaybeUninit<T>> {
    let mut v = Vec::with_capacity(n);
    // SAFETY: MaybeUninit<T> needs no initialisation.
    unsafe { v.set_len(n) };
    v
}

/// An initialised slice seen as possibly-uninitialised, for code that writes outputs
/// through `MaybeUninit` (the streamed gradient, gemm into its destination).
pub(crate) fn as_uninit<T>(s: &mut [T]) -> &mut [MaybeUninit<T>] {
    // SAFETY: same layout; callers only write initialised values through it, so every
    // element stays initialised.
    unsafe { &mut *(s as *mut [T] as *mut [MaybeUninit<T>]) }
}

/// The buffer as initialised values, without a copy.
///
/// # Safety
/// Every element of `v` must have been written.
pub(crate) unsafe fn assume_init<T>(v: Vec<MaybeUninit<T>>) -> Vec<T> {
    let mut v = std::mem::ManuallyDrop::new(v);
    // SAFETY: same allocation, length and capacity; MaybeUninit<T> has T's layout, and
    // the caller guarantees every element is initialised.
    unsafe { Vec::from_raw_parts(v.as_mut_ptr() as *mut T, v.len(), v.capacity()) }
}
