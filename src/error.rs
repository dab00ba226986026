//! The command line's errors: the core's, wrapped, and its own (files, devices, plots,
//! PyTorch, usage). `main` prints them as `error: …` and exits 1; [`Error::Interrupted`]
//! exits 130 without a message.

use std::path::{Path, PathBuf};

use thiserror::Error;

use cifar_core::data::DataError;
use cifar_core::error::{ConfigError, DeviceError};
use cifar_core::io::weights::{FileError, SaveError};
use cifar_core::train::TrainError;

#[derive(Debug, Error)]
pub enum Error {
    #[error(transparent)]
    Data(#[from] DataError),
    #[error(transparent)]
    File(#[from] FileError),
    #[error(transparent)]
    Train(#[from] TrainError),
    #[error("invalid setting: {0}")]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Device(#[from] DeviceError),
    #[error("{}: {source}", path.display())]
    Save { path: PathBuf, source: SaveError },
    #[error("{}: cannot {action} ({source})", path.display())]
    Io { path: PathBuf, action: &'static str, source: std::io::Error },
    /// A backend that cannot start or computes wrongly.
    #[error("{0}")]
    Backend(String),
    #[error("{chart}: {problem}")]
    Plot { chart: String, problem: String },
    /// The PyTorch reference of `bench` did not run.
    #[error("{0}")]
    PyTorch(String),
    /// Options that do not fit together.
    #[error("{0}")]
    Usage(String),
    /// Ctrl-C: the checkpoint is saved; exit status 130.
    #[error("interrupted")]
    Interrupted,
}

impl Error {
    /// For `map_err`: an I/O failure to `action` (read, write, create) `path`.
    pub fn io(path: &Path, action: &'static str) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.to_path_buf();
        move |source| Self::Io { path, action, source }
    }

    pub fn plot(chart: &str, problem: impl std::fmt::Display) -> Self {
        Self::Plot { chart: chart.into(), problem: problem.to_string() }
    }
}
