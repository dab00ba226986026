//! The platform-free core of the CIFAR-10 trainer: CIFAR-10 parsing and augmentation
//! (`data`), the custom ResNet and where its ops run (`model`), the training driver with its
//! optimizer, one-cycle schedule, metrics and LR finder (`train`), and weights and checkpoints
//! as bytes (`io`). It builds for wasm32 (the page, crate `cifar-web`) and natively (the CLI,
//! which turns on the `flex-kernels` feature). ARCHITECTURE.md has the map.

pub mod data;
pub mod error;
pub mod io;
pub mod model;
pub mod rng;
pub mod train;
