//! Run-time dispatch to AVX-512 / AVX2 copies of hot loops. The crate is built for baseline
//! x86-64 (SSE2), so that the binary runs on any x86-64 CPU; without this the compiler
//! vectorises our kernels four floats wide.

/// Defines `fn $name(args) -> ret` that runs `$body(args)` compiled for AVX-512 or AVX2 when
/// the CPU has them (checked at run time), else as is. `$body` must be `#[inline(always)]`
/// (and so must what it calls in its loops, closures included), so that it is compiled inside
/// the feature-enabled copies. Floating-point results do not depend on the copy: Rust never
/// contracts `a * b + c` into an FMA on its own, and the bodies fix their summation order.
macro_rules! simd_fn {
    ($(#[$m:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),*) $(-> $ret:ty)? => $body:ident) => {
        $(#[$m])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
                unsafe fn avx512($($arg: $ty),*) $(-> $ret)? {
                    $body($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) $(-> $ret)? {
                    $body($($arg),*)
                }
                if $crate::simd::avx512() {
                    // SAFETY: the CPU has the features the copy is compiled for.
                    return unsafe { avx512($($arg),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                    // SAFETY: as above.
                    return unsafe { avx2($($arg),*) };
                }
            }
            $body($($arg),*)
        }
    };
}

pub(crate) use simd_fn;

/// Whether the CPU has the AVX-512 subsets the `avx512` copies are compiled for: F, and BW,
/// DQ and VL (bytes and 64-bit lanes, e.g. the pool's winning cells and the dropout mask's
/// hash; every AVX-512 CPU since Skylake-SP and Zen 4 has them).
#[cfg(target_arch = "x86_64")]
#[inline]
pub(crate) fn avx512() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bw")
        && std::arch::is_x86_feature_detected!("avx512dq")
        && std::arch::is_x86_feature_detected!("avx512vl")
}
