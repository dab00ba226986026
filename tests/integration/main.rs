//! All integration tests in one binary: Burn is large, so one link instead of one per file.

mod augment;
mod backends;
mod cli;
mod common;
mod cpu_ops;
mod learning;
mod model;
mod parity;
mod persistence;
mod schedule;

/// The binary's allocator, so that flex trains here as fast as in the CLI.
#[global_allocator]
static ALLOCATOR: cifar_webgpu::memory::CachingAllocator = cifar_webgpu::memory::CachingAllocator;
