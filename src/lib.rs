//! The native command line's library: device selection (`backend`), the `bench` command,
//! the CIFAR-10 download, plots, the errors (`error`), and the caching allocator the binary installs (`memory`).
//! The trainer itself is the platform-free `cifar-core`; ARCHITECTURE.md has the map.

pub mod backend;
pub mod bench;
pub mod download;
pub mod error;
pub mod memory;
pub mod plots;
