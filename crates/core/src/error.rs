//! The errors every layer of the core shares. Each layer has its own besides: `DataError`
//! (parsing CIFAR-10), `FileError` (weights and checkpoints), `TrainError` (a run).

use thiserror::Error;

/// A setting outside its range, named as in `config.json` (`width must be in (0, 8], got 9`).
#[derive(Debug, Clone, PartialEq, Error)]
#[error("{setting} {problem}")]
pub struct ConfigError {
    pub setting: String,
    pub problem: String,
}

impl ConfigError {
    pub fn new(setting: impl Into<String>, problem: impl Into<String>) -> Self {
        Self { setting: setting.into(), problem: problem.into() }
    }
}

/// A failed device → host transfer (a lost GPU, a browser that dropped the WebGPU device).
#[derive(Debug, Clone, PartialEq, Error)]
#[error("reading back from the device: {0}")]
pub struct DeviceError(pub String);
