//! One file per command; what they share (writing files, the interrupted marker).

pub(crate) mod bench;
pub(crate) mod check_device;
pub(crate) mod eval;
pub(crate) mod lr_find;
pub(crate) mod train;

use std::path::Path;

use cifar_webgpu::download::write_atomic;

/// The error of a run stopped by Ctrl-C (exit status 130, no message).
pub(crate) const INTERRUPTED: &str = "interrupted";

pub(crate) fn save(path: &Path, bytes: &[u8]) -> Result<(), String> {
    write_atomic(path, bytes).map_err(|e| format!("{}: cannot write ({e})", path.display()))
}
