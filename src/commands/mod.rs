//! One file per command; what they share (writing files).

pub(crate) mod bench;
pub(crate) mod check_device;
pub(crate) mod eval;
pub(crate) mod lr_find;
pub(crate) mod train;

use std::path::Path;

use cifar_webgpu::download::write_atomic;
use cifar_webgpu::error::Error;

/// Fails now rather than after the computation when `path` cannot be written: creates its
/// folder and a probe file beside it, removed again.
pub(crate) fn check_writable(path: &Path) -> Result<(), Error> {
    if path.is_dir() {
        return Err(Error::Usage(format!("{}: is a directory; give a file name", path.display())));
    }
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(parent).map_err(Error::io(parent, "create"))?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let probe = parent.join(format!(".{name}.probe-{}", std::process::id()));
    std::fs::File::create_new(&probe).map_err(Error::io(path, "write"))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

/// Writes `bytes` to `path` atomically (temporary file, then rename).
pub(crate) fn save(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    write_atomic(path, bytes).map_err(Error::io(path, "write"))
}
