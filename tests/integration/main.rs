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
