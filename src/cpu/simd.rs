//! The one SIMD-level decision every CPU kernel follows.
//!
//! Kernels are written as scalar-looking loops over fixed-width lanes that LLVM
//! vectorises. [`dispatch!`] compiles such code three times, for AVX-512, AVX2+FMA and
//! the baseline, and runs the copy for [`level`]: detected once per process, lowered by
//! [`set_cap`]. Every copy computes the same bits (Rust never contracts a·b + c into an
//! FMA, and the explicit `mul_add`s are exactly rounded on every target), which the
//! tests check by capping the level.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::OnceLock;

/// The widest vector unit a kernel may use, narrowest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Whatever the plain build targets (SSE2 on x86_64).
    Baseline = 0,
    /// AVX2 and FMA.
    Avx2 = 1,
    /// AVX-512 F, BW and VL (with AVX2 and FMA).
    Avx512 = 2,
}

/// The cap as a `Level` discriminant; `u8::MAX` is no cap.
static CAP: AtomicU8 = AtomicU8::new(u8::MAX);

/// What the CPU has, detected on first use.
pub fn detected() -> Level {
    static DETECTED: OnceLock<Level> = OnceLock::new();
    *DETECTED.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            let has = |f: &[bool]| f.iter().all(|&b| b);
            use std::arch::is_x86_feature_detected as x86;
            if has(&[x86!("avx2"), x86!("fma")]) {
                if has(&[x86!("avx512f"), x86!("avx512bw"), x86!("avx512vl")]) {
                    return Level::Avx512;
                }
                return Level::Avx2;
            }
        }
        Level::Baseline
    })
}

/// The level kernels run at: [`detected`], lowered to the cap if one is set.
#[inline]
pub fn level() -> Level {
    capped(detected(), CAP.load(Ordering::Relaxed))
}

/// Whether kernels may use F16C (the f16 ⇄ f32 conversions): the CPU has it and the
/// level is not capped to the baseline, so that a capped run also checks the
/// software conversions. Not part of [`Level`]: a CPU (or a VM's CPUID) with AVX2 but
/// no F16C keeps its AVX2 kernels. Callers reach F16C code through a
/// `#[target_feature(enable = "f16c")]` function, not through [`dispatch!`].
#[inline]
pub fn has_f16c() -> bool {
    static DETECTED: OnceLock<bool> = OnceLock::new();
    #[cfg(target_arch = "x86_64")]
    let has = *DETECTED.get_or_init(|| std::arch::is_x86_feature_detected!("f16c"));
    #[cfg(not(target_arch = "x86_64"))]
    let has = *DETECTED.get_or_init(|| false);
    has && level() > Level::Baseline
}

/// Whether kernels may use AVX512-BF16 (`vdpbf16ps`, the bf16 products of
/// `--dtype bf16`): the CPU has it and the level is not capped below AVX-512, so that
/// a capped run checks the portable kernel. Reached through a `#[target_feature]`
/// function, like F16C.
#[inline]
pub fn has_avx512bf16() -> bool {
    static DETECTED: OnceLock<bool> = OnceLock::new();
    #[cfg(target_arch = "x86_64")]
    let has = *DETECTED.get_or_init(|| std::arch::is_x86_feature_detected!("avx512bf16"));
    #[cfg(not(target_arch = "x86_64"))]
    let has = *DETECTED.get_or_init(|| false);
    has && level() == Level::Avx512
}

/// `detected` lowered to the cap `cap` (a `Level` discriminant, or above all of them).
#[inline]
fn capped(detected: Level, cap: u8) -> Level {
    match cap {
        0 => Level::Baseline,
        1 => detected.min(Level::Avx2),
        _ => detected,
    }
}

/// Caps the level every kernel uses (`None` lifts the cap): lets tests check that
/// every compiled copy gives the same bits. Process-wide; a cap above what the CPU
/// has changes nothing.
pub fn set_cap(cap: Option<Level>) {
    CAP.store(cap.map_or(u8::MAX, |l| l as u8), Ordering::Relaxed);
}

/// Runs code compiled for [`level`].
///
/// * `dispatch!(expr)`: `expr` (a call of `#[inline(always)]` code) in a closure handed
///   to a `#[target_feature]` copy. For small bodies, which LLVM inlines into the copy.
/// * `dispatch!(fn name<T: Bound, ...>(arg: Type, ...) -> Ret = imp)`: defines `name`,
///   which calls the `#[inline(always)]` function `imp` through one `#[target_feature]`
///   function per level. For whole tile or row loops: `imp` is inlined into each copy
///   whatever its size, so none of it falls back to the baseline build.
macro_rules! dispatch {
    (fn $name:ident<$($g:ident: $b:path),+>($($a:ident: $t:ty),* $(,)?) $(-> $r:ty)? = $imp:ident) => {
        #[allow(clippy::too_many_arguments)]
        fn $name<$($g: $b),+>($($a: $t),*) $(-> $r)? {
            #[cfg(target_arch = "x86_64")]
            {
                /// # Safety
                /// The CPU must have AVX-512 F, BW, VL, AVX2 and FMA.
                #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn avx512<$($g: $b),+>($($a: $t),*) $(-> $r)? {
                    $imp::<$($g),+>($($a),*)
                }
                /// # Safety
                /// The CPU must have AVX2 and FMA.
                #[target_feature(enable = "avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn avx2<$($g: $b),+>($($a: $t),*) $(-> $r)? {
                    $imp::<$($g),+>($($a),*)
                }
                match $crate::cpu::simd::level() {
                    // SAFETY: `level` only reports features the CPU has.
                    $crate::cpu::simd::Level::Avx512 => return unsafe { avx512::<$($g),+>($($a),*) },
                    // SAFETY: as above.
                    $crate::cpu::simd::Level::Avx2 => return unsafe { avx2::<$($g),+>($($a),*) },
                    $crate::cpu::simd::Level::Baseline => {}
                }
            }
            $imp::<$($g),+>($($a),*)
        }
    };
    ($body:expr) => {{
        #[cfg(target_arch = "x86_64")]
        {
            /// # Safety
            /// The CPU must have AVX-512 F, BW, VL, AVX2 and FMA.
            #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
            unsafe fn avx512<R>(f: impl FnOnce() -> R) -> R {
                f()
            }
            /// # Safety
            /// The CPU must have AVX2 and FMA.
            #[target_feature(enable = "avx2,fma")]
            unsafe fn avx2<R>(f: impl FnOnce() -> R) -> R {
                f()
            }
            match $crate::cpu::simd::level() {
                // SAFETY: `level` only reports features the CPU has.
                $crate::cpu::simd::Level::Avx512 => unsafe { avx512(|| $body) },
                // SAFETY: as above.
                $crate::cpu::simd::Level::Avx2 => unsafe { avx2(|| $body) },
                $crate::cpu::simd::Level::Baseline => $body,
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            $body
        }
    }};
}
pub(crate) use dispatch;

#[cfg(test)]
mod tests {
    use super::*;

    /// The cap lowers the level and never raises it past what was detected. (On the
    /// pure function: setting the process-wide cap would slow the other unit tests.)
    #[test]
    fn cap_only_lowers_the_level() {
        let all = [Level::Baseline, Level::Avx2, Level::Avx512];
        for d in all {
            for cap in all {
                assert_eq!(capped(d, cap as u8), cap.min(d), "{d:?} capped at {cap:?}");
            }
            assert_eq!(capped(d, u8::MAX), d);
        }
    }
}
