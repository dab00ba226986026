//! The arithmetic of the convolutions' GEMMs, chosen once per process: exact f32, or bf16
//! operands with f32 sums on CPUs with AMX-BF16 (`amx.rs`). Weights, activations, gradients
//! and everything outside the GEMMs stay f32 either way (fp32 master weights).

use std::sync::atomic::{AtomicBool, Ordering};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precision {
    /// f32 operands and sums: the reference, and PyTorch's default.
    F32,
    /// Operands rounded to bf16 (8 significant bits), products summed in f32.
    Bf16,
}

impl Precision {
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        }
    }

    /// The fastest this CPU offers.
    pub fn fastest() -> Precision {
        if crate::amx::available() { Precision::Bf16 } else { Precision::F32 }
    }
}

#[derive(Debug, thiserror::Error)]
#[error(
    "precision bf16 needs a CPU with AMX-BF16 (Intel Xeon 4th generation, Sapphire Rapids, or later) on Linux; this one does not offer it: use f32"
)]
pub struct Unsupported;

static BF16: AtomicBool = AtomicBool::new(false);

/// Sets the precision of every convolution that follows, in this process.
pub fn set(precision: Precision) -> Result<(), Unsupported> {
    if precision == Precision::Bf16 && !crate::amx::available() {
        return Err(Unsupported);
    }
    BF16.store(precision == Precision::Bf16, Ordering::Relaxed);
    Ok(())
}

pub fn current() -> Precision {
    if BF16.load(Ordering::Relaxed) { Precision::Bf16 } else { Precision::F32 }
}
