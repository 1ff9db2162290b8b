//! The CPU's vector instruction sets, detected once per process, and the one dispatch every kernel uses.
//!
//! Kernels come in up to three builds: scalar code (every machine), AVX2 + FMA (8 `f32` lanes) and AVX-512F
//! (16 lanes, with AVX2 and FMA). [`isa`] says which the CPU runs (read once, then cached); [`dispatch!`]
//! picks the widest build a kernel has.

use std::sync::OnceLock;

/// A level of vector support, ordered: each level includes the ones below it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Isa {
    /// No vector kernels: the scalar code.
    Scalar,
    /// AVX2 and FMA: 8 `f32` lanes.
    Avx2,
    /// AVX-512F with AVX2 and FMA: 16 `f32` lanes.
    Avx512,
}

/// The widest level this CPU supports (detected on the first call).
#[inline]
pub fn isa() -> Isa {
    static DETECTED: OnceLock<Isa> = OnceLock::new();
    *DETECTED.get_or_init(detect)
}

fn detect() -> Isa {
    #[cfg(target_arch = "x86_64")]
    {
        let avx2 = std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma");
        if avx2 && std::is_x86_feature_detected!("avx512f") {
            return Isa::Avx512;
        }
        if avx2 {
            return Isa::Avx2;
        }
    }
    Isa::Scalar
}

/// Whether the AVX-512F kernels (which also use AVX2 and FMA) can run on this machine.
#[inline]
pub fn has_avx512() -> bool {
    isa() >= Isa::Avx512
}

/// Evaluate the widest kernel build the CPU supports among those listed, else the fallback:
///
/// ```ignore
/// dispatch!(Avx512 => avx512::exp_inplace(x), Avx2 => avx::exp_inplace(x); else scalar(x))
/// dispatch!(Avx2 if c % 8 == 0 => avx::rows8(x, c); else rows(x, c))
/// ```
///
/// A level may carry a guard (`if …`): the shapes that build handles.
/// Levels are listed widest first. The vector builds are `unsafe fn`s whose only obligation left to the macro
/// is the CPU support it checks; the caller checks their other preconditions (their `# Safety` sections:
/// lengths, bounds) before the macro. Off x86-64 only the fallback is compiled.
macro_rules! dispatch {
    ($($level:ident $(if $guard:expr)? => $kernel:expr),+ ; else $fallback:expr) => {
        match $crate::kernels::cpu::isa() {
            $(
                #[cfg(target_arch = "x86_64")]
                isa if isa >= $crate::kernels::cpu::Isa::$level $(&& $guard)? => {
                    // SAFETY: the CPU supports `$level`, the instruction set this build is compiled for; the
                    // caller has checked the kernel's other preconditions.
                    #[allow(unused_unsafe)]
                    unsafe {
                        $kernel
                    }
                }
            )+
            _ => $fallback,
        }
    };
}
pub(crate) use dispatch;
