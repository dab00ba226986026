//! CIFAR-10 custom ResNet trainer: one platform-free core (model, data, augmentation,
//! schedule, optimizer, training loop, metrics, plots, weights) driven by a native CLI
//! (`src/main.rs`) and, later, by the browser build.

pub mod augment;
pub mod batchnorm;
pub mod checkpoint;
pub mod data;
pub mod dropout;
pub mod lr_finder;
pub mod metrics;
pub mod model;
pub mod optim;
pub mod plots;
pub mod rng;
pub mod schedule;
pub mod summary;
pub mod training;
pub mod weights;

#[cfg(not(target_arch = "wasm32"))]
pub mod backend;
#[cfg(not(target_arch = "wasm32"))]
pub mod bench;
#[cfg(not(target_arch = "wasm32"))]
pub mod conv_kernels;
#[cfg(not(target_arch = "wasm32"))]
pub mod conv_winograd;
#[cfg(not(target_arch = "wasm32"))]
pub mod cpu_ops;

#[cfg(not(target_arch = "wasm32"))]
pub mod download;
#[cfg(not(target_arch = "wasm32"))]
pub mod memory;
#[cfg(not(target_arch = "wasm32"))]
mod simd;

#[cfg(not(target_arch = "wasm32"))]
#[global_allocator]
static ALLOCATOR: memory::CachingAllocator = memory::CachingAllocator;
