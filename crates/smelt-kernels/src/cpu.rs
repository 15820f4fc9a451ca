//! CPU feature detection, once per process. A portable build runs everywhere and picks its
//! fastest kernels at run time; `SMELT_ISA=scalar|avx2|neon` forces a lower level (never a
//! higher one than the machine has) for testing and comparison. On the AVX2 level a few kernels
//! have AVX-512 forms ([`avx512`]); any `SMELT_ISA` turns those off.

use std::sync::OnceLock;

/// Instruction-set levels with their own kernels, lowest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Isa {
    /// Portable Rust: the reference twins.
    Scalar,
    /// x86-64 with AVX2, FMA and F16C (Haswell, Zen and later).
    Avx2,
    /// aarch64 Advanced SIMD (every aarch64 CPU).
    Neon,
}

impl Isa {
    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::Neon => "neon",
        }
    }

    pub fn from_name(s: &str) -> Option<Isa> {
        [Isa::Scalar, Isa::Avx2, Isa::Neon].into_iter().find(|i| i.name().eq_ignore_ascii_case(s))
    }
}

impl std::fmt::Display for Isa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Every level this machine can run, lowest first (always includes [`Isa::Scalar`]); detected
/// once.
pub fn available() -> &'static [Isa] {
    static AVAILABLE: OnceLock<Vec<Isa>> = OnceLock::new();
    AVAILABLE.get_or_init(detect)
}

fn detect() -> Vec<Isa> {
    let mut v = vec![Isa::Scalar];
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") && std::is_x86_feature_detected!("f16c") {
        v.push(Isa::Avx2);
    }
    #[cfg(target_arch = "aarch64")]
    if std::arch::is_aarch64_feature_detected!("neon") {
        v.push(Isa::Neon);
    }
    v
}

/// The level kernels use: the best available, or `SMELT_ISA` if it names an available one.
pub fn best() -> Isa {
    static BEST: OnceLock<Isa> = OnceLock::new();
    *BEST.get_or_init(|| {
        let avail = available();
        let top = *avail.last().unwrap_or(&Isa::Scalar);
        match std::env::var("SMELT_ISA").ok().as_deref().and_then(Isa::from_name) {
            Some(want) if avail.contains(&want) => want,
            _ => top,
        }
    })
}

/// Whether this CPU has AVX-512 F, BW, VL and VNNI (with AVX2, FMA and F16C): the extensions
/// of the AVX2 level's AVX-512 kernels (Ice Lake, Sapphire Rapids, Zen 4 and later).
pub fn has_avx512() -> bool {
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            available().contains(&Isa::Avx2)
                && std::is_x86_feature_detected!("avx512f")
                && std::is_x86_feature_detected!("avx512bw")
                && std::is_x86_feature_detected!("avx512vl")
                && std::is_x86_feature_detected!("avx512vnni")
        }
        #[cfg(not(target_arch = "x86_64"))]
        false
    })
}

/// Whether the AVX-512 kernels run: the CPU has them ([`has_avx512`]) and `SMELT_ISA` is unset
/// (`SMELT_ISA=avx2` measures the same machine without them).
pub fn avx512() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| has_avx512() && best() == Isa::Avx2 && std::env::var_os("SMELT_ISA").is_none())
}

/// The kernels' level for reports: [`best`]'s name, `avx2+avx512` where the AVX-512 forms run.
pub fn level_name() -> &'static str {
    if avx512() {
        "avx2+avx512"
    } else {
        best().name()
    }
}

/// Extra facts for reports: which notable features the CPU has.
pub fn features() -> Vec<&'static str> {
    let mut f = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        for (name, has) in [
            ("avx2", std::is_x86_feature_detected!("avx2")),
            ("fma", std::is_x86_feature_detected!("fma")),
            ("f16c", std::is_x86_feature_detected!("f16c")),
            ("avx512f", std::is_x86_feature_detected!("avx512f")),
            ("avx512vnni", std::is_x86_feature_detected!("avx512vnni")),
            ("avxvnni", std::is_x86_feature_detected!("avxvnni")),
        ] {
            if has {
                f.push(name);
            }
        }
    }
    #[cfg(target_arch = "aarch64")]
    {
        for (name, has) in [
            ("neon", std::arch::is_aarch64_feature_detected!("neon")),
            ("dotprod", std::arch::is_aarch64_feature_detected!("dotprod")),
            ("i8mm", std::arch::is_aarch64_feature_detected!("i8mm")),
            ("fp16", std::arch::is_aarch64_feature_detected!("fp16")),
        ] {
            if has {
                f.push(name);
            }
        }
    }
    f
}
