//! Weights and checkpoints as bytes: safetensors files with PyTorch's names and layouts, the
//! same code on native and in the browser (the shells decide where the bytes go).

pub mod checkpoint;
pub mod readback;
pub mod traffic;
pub mod weights;
