//! glibc malloc settings for training: keep freed large buffers for reuse.
//!
//! A step allocates and frees hundreds of MB of 4-16 MiB activations and gradients.
//! With glibc's defaults, freeing them at the end of the backward leaves a large free
//! block at the top of the heap, which glibc trims (returns to the OS), and buffers
//! above the dynamic mmap threshold are munmap'ed; the next step then page-faults all
//! of it back in (measured with `examples/bench_kernels.rs alloc`, BENCHMARKS.md).

/// Never serve allocations with mmap, and never trim the heap: a training process
/// reaches its peak footprint every step, so memory returned to the OS at the end of a
/// step is faulted back in by the next (with a 1 GiB threshold, bench-8l's steps, whose
/// free top passes it, re-faulted ~900 MB each). Call first thing in `main`, before
/// threads start. Returns whether glibc accepted every setting; a no-op returning false
/// on non-glibc targets.
pub fn tune_glibc_malloc() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use std::os::raw::c_int;
        extern "C" {
            fn mallopt(param: c_int, value: c_int) -> c_int;
        }
        const M_TRIM_THRESHOLD: c_int = -1;
        const M_TOP_PAD: c_int = -2;
        const M_MMAP_MAX: c_int = -4;
        // SAFETY: mallopt only changes malloc's parameters. (A request a thread
        // arena cannot hold still falls back to mmap inside glibc, so M_MMAP_MAX = 0
        // cannot make a large allocation fail.)
        unsafe {
            mallopt(M_MMAP_MAX, 0) == 1
                && mallopt(M_TRIM_THRESHOLD, -1) == 1 // -1: no trimming at all
                && mallopt(M_TOP_PAD, 64 << 20) == 1
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}
