//! The data a run trains on: CIFAR-10's format lives in `cifar-formats` (Burn-free, fuzzed),
//! re-exported here; the augmentation that builds batches is the core's.

pub mod augment;

pub use cifar_formats::cifar::*;
