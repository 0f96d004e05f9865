//! The vector instructions that the kernels' own loops run with, chosen at
//! run time.
//!
//! The binary is built for plain x86-64, whose vectors are SSE2's 4 lanes,
//! so that it runs on any x86-64 CPU. The GEMMs choose their instructions
//! themselves (the `gemm` crate); the loops around them (GroupNorm and
//! SiLU, Winograd's transforms, f16 storage, the softmax's exponentials)
//! are compiled three times by `multiversion!`, for SSE2, AVX2 and
//! AVX-512, and each call runs the widest this CPU has. The versions do
//! the same IEEE operations in the same order (Rust does not fuse a
//! multiply and an add unless told to), so they give the same bits: the
//! wider ones are only faster.
//!
//! `VAE_CPU_CAPABILITY` (`baseline`, `avx2` or `avx512`, as PyTorch's
//! `ATEN_CPU_CAPABILITY`) caps the choice, to measure or test the narrower
//! versions; it never enables what the CPU lacks.

use std::sync::OnceLock;

/// Instruction sets, narrowest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Isa {
    /// What every CPU of the target has (SSE2 on x86-64).
    Baseline,
    /// AVX2 and FMA (x86-64, Haswell and later).
    Avx2,
    /// AVX-512 F, BW, DQ and VL (x86-64, Skylake-SP, Zen 4 and later).
    Avx512,
}

impl Isa {
    pub const ALL: [Isa; 3] = [Isa::Baseline, Isa::Avx2, Isa::Avx512];

    pub fn name(self) -> &'static str {
        match self {
            Isa::Baseline => "baseline",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
        }
    }

    /// The widest this CPU has.
    pub fn detected() -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            let has = |f: &str| match f {
                "avx512" => {
                    is_x86_feature_detected!("avx512f")
                        && is_x86_feature_detected!("avx512bw")
                        && is_x86_feature_detected!("avx512dq")
                        && is_x86_feature_detected!("avx512vl")
                }
                _ => is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"),
            };
            // F16C (f16 storage) came with AVX, before AVX2.
            if has("avx512") && has("avx2") && is_x86_feature_detected!("f16c") {
                return Isa::Avx512;
            }
            if has("avx2") && is_x86_feature_detected!("f16c") {
                return Isa::Avx2;
            }
        }
        Isa::Baseline
    }
}

/// The instruction set the kernels run with: the widest this CPU has, at
/// most `VAE_CPU_CAPABILITY`'s (an unknown value is ignored, with a warning).
pub fn isa() -> Isa {
    static ISA: OnceLock<Isa> = OnceLock::new();
    *ISA.get_or_init(|| {
        let detected = Isa::detected();
        match std::env::var("VAE_CPU_CAPABILITY") {
            Ok(cap) => match Isa::ALL.into_iter().find(|isa| isa.name() == cap.trim().to_ascii_lowercase()) {
                Some(cap) => detected.min(cap),
                None => {
                    eprintln!("warning: VAE_CPU_CAPABILITY={cap} is none of baseline, avx2, avx512: ignored");
                    detected
                }
            },
            Err(_) => detected,
        }
    })
}

/// Defines a function whose body is compiled for each [`Isa`] and run with
/// [`isa()`]'s. The body is written once, as plain Rust on slices; loops
/// over them vectorise to the width of each version. For leaf loops: the
/// parallel drivers call them (a closure handed to rayon would be compiled
/// for the baseline).
macro_rules! multiversion {
    ($(#[$attr:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$attr])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn portable($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma,f16c")]
            fn avx2($($arg: $ty),*) $(-> $ret)? {
                portable($($arg),*)
            }
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,f16c")]
            fn avx512($($arg: $ty),*) $(-> $ret)? {
                portable($($arg),*)
            }
            match $crate::kernels::isa::isa() {
                // SAFETY: `isa()` names only instruction sets this CPU has.
                #[cfg(target_arch = "x86_64")]
                $crate::kernels::isa::Isa::Avx512 => unsafe { avx512($($arg),*) },
                // SAFETY: as above.
                #[cfg(target_arch = "x86_64")]
                $crate::kernels::isa::Isa::Avx2 => unsafe { avx2($($arg),*) },
                _ => portable($($arg),*),
            }
        }
    };
}
pub(crate) use multiversion;
