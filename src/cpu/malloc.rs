//! glibc malloc settings for training: keep freed large buffers for reuse.
//!
//! A step allocates and frees hundreds of MB of 4-16 MiB activations and gradients.
//! With glibc's defaults, freeing them at the end of the backward leaves a large free
//! block at the top of the heap, which glibc trims (returns to the OS), and buffers
//! above the dynamic mmap threshold are munmap'ed; the next step then page-faults all
//! of it back in (measured with `examples/bench_kernels.rs alloc`, BENCHMARKS.md).

#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod glibc {
    use std::os::raw::c_int;
    extern "C" {
        fn mallopt(param: c_int, value: c_int) -> c_int;
    }
    pub const M_TRIM_THRESHOLD: c_int = -1;
    pub const M_TOP_PAD: c_int = -2;
    pub const M_MMAP_MAX: c_int = -4;

    /// mallopt(param, value), true when glibc accepted it.
    pub fn set(param: c_int, value: c_int) -> bool {
        // SAFETY: mallopt only changes malloc's parameters. (A request a thread arena
        // cannot hold still falls back to mmap inside glibc, so M_MMAP_MAX = 0 cannot
        // make a large allocation fail.)
        unsafe { mallopt(param, value) == 1 }
    }
}

/// Never serve allocations with mmap, and keep up to 1 GiB of free heap top instead of
/// trimming it: for every command, so that the kernels' large temporaries are reused.
/// Call first thing in `main`, before threads start. Returns whether glibc accepted
/// every setting; a no-op returning false on non-glibc targets.
pub fn tune_glibc_malloc() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        glibc::set(glibc::M_MMAP_MAX, 0)
            && glibc::set(glibc::M_TRIM_THRESHOLD, 1 << 30)
            && glibc::set(glibc::M_TOP_PAD, 64 << 20)
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

/// Never trim the heap at all: for `train` and `bench`, which reach their peak footprint
/// every step, so that memory returned to the OS at the end of one step is not faulted
/// back in by the next (a larger model's step frees more than 1 GiB at the top of the
/// heap; BENCHMARKS.md, "The heap kept between steps"). Not for long-lived `serve`,
/// where a one-off peak would then stay resident. Returns whether glibc accepted it.
pub fn keep_heap_between_steps() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        glibc::set(glibc::M_TRIM_THRESHOLD, -1) // -1: no trimming
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    /// A smoke test: glibc takes every setting, -1 for the trim threshold included (the
    /// effect itself is measured by page-fault counts in BENCHMARKS.md, not here).
    #[test]
    fn glibc_accepts_the_settings() {
        assert!(super::tune_glibc_malloc());
        assert!(super::keep_heap_between_steps());
    }
}
