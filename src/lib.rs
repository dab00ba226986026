//! The native command line's library: device selection (`backend`), the `bench` command,
//! the CIFAR-10 download, plots, and the caching allocator the binary installs (`memory`).
//! The trainer itself is the platform-free `cifar-core`; ARCHITECTURE.md has the map.

pub mod backend;
pub mod bench;
pub mod download;
pub mod memory;
pub mod plots;
