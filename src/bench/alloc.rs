//! A global allocator that counts live heap bytes and their peak, so that benchmarks
//! can report the extra memory a kernel needs (`peak_extra_bytes`).
//!
//! Install it in a binary with
//! `#[global_allocator] static A: tinylm::bench::alloc::CountingAlloc = tinylm::bench::alloc::CountingAlloc;`
//! Without it installed, the counters stay at zero.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
static INSTALLED: AtomicUsize = AtomicUsize::new(0);

/// Forwards to the system allocator and keeps `LIVE` and `PEAK` up to date.
pub struct CountingAlloc;

// Each method's safety contract is `GlobalAlloc`'s, which `System` needs as well: every
// call is forwarded unchanged.
unsafe impl GlobalAlloc for CountingAlloc {
    /// # Safety
    /// `GlobalAlloc::alloc`'s contract, forwarded to `System`.
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc(layout);
        if !p.is_null() {
            grow(layout.size());
        }
        p
    }
    /// # Safety
    /// `GlobalAlloc::alloc_zeroed`'s contract, forwarded to `System`.
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc_zeroed(layout);
        if !p.is_null() {
            grow(layout.size());
        }
        p
    }
    /// # Safety
    /// `GlobalAlloc::dealloc`'s contract, forwarded to `System`.
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout);
        LIVE.fetch_sub(layout.size(), Relaxed);
    }
    /// # Safety
    /// `GlobalAlloc::realloc`'s contract, forwarded to `System`.
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = System.realloc(ptr, layout, new_size);
        if !p.is_null() {
            LIVE.fetch_sub(layout.size(), Relaxed);
            grow(new_size);
        }
        p
    }
}

fn grow(size: usize) {
    INSTALLED.store(1, Relaxed);
    let now = LIVE.fetch_add(size, Relaxed) + size;
    PEAK.fetch_max(now, Relaxed);
}

/// Whether the counting allocator is the global allocator of this process.
pub fn installed() -> bool {
    INSTALLED.load(Relaxed) == 1
}

/// Live heap bytes now.
pub fn live_bytes() -> usize {
    LIVE.load(Relaxed)
}

/// Resets the peak to the current live bytes and returns that baseline.
pub fn reset_peak() -> usize {
    let now = LIVE.load(Relaxed);
    PEAK.store(now, Relaxed);
    now
}

/// Peak live bytes since the last [`reset_peak`] minus `baseline`.
pub fn peak_since(baseline: usize) -> usize {
    PEAK.load(Relaxed).saturating_sub(baseline)
}
