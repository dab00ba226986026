//! A checkpoint is one safetensors file: the model (PyTorch names, as `model.safetensors`),
//! the optimizer state (`optim.<module path>.first|second`), the moving average of the weights
//! when the recipe has one (`ema.<PyTorch name>`), the current epoch's shuffled order,
//! and the rest (config, step, RNG state, history) as JSON metadata. Resuming from it continues
//! the exact same run: same batches, augmentations and dropout masks.

use std::collections::BTreeMap;

use burn::tensor::{Device, TensorData};
use cifar_formats::checkpoint::META_KEY;
use serde::{Deserialize, Serialize};

use crate::io::weights::{ArrayData, EncodeError, FileError, NamedArray, SaveError, load_model, model_file};
use crate::rng::Rng;
use crate::train::metrics::{EpochMetrics, RunningMean};
use crate::train::{EpochCursor, Trainer, TrainingConfig};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Meta {
    #[serde(deserialize_with = "any_config")]
    config: TrainingConfig,
    step: usize,
    rng: Rng,
    history: Vec<EpochMetrics>,
    optimizer_steps: BTreeMap<String, u64>,
    /// Set when the checkpoint was taken inside an epoch (Ctrl-C).
    cursor: Option<CursorMeta>,
    train_len: usize,
}

/// Checkpoints from before the recipe was nested resume too.
fn any_config<'de, D: serde::Deserializer<'de>>(d: D) -> Result<TrainingConfig, D::Error> {
    TrainingConfig::from_value(serde_json::Value::deserialize(d)?).map_err(serde::de::Error::custom)
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct CursorMeta {
    next_batch: usize,
    running: RunningMean,
    seconds: f64,
}

/// Serialises the trainer. Call [`Trainer::sync`] first so no step result is pending.
pub async fn to_bytes(trainer: &Trainer, train_len: usize) -> Result<Vec<u8>, SaveError> {
    let mut file = model_file(&trainer.model, &trainer.config.model, trainer.step as u64).await?;
    let (tensors, optimizer_steps) = trainer.optim.export();
    let optim = tensors.into_iter().map(|(name, t)| (format!("optim.{name}"), t));
    let ema = trainer.ema.iter().flat_map(|e| &e.tensors).map(|(name, t)| (format!("ema.{name}"), t.clone()));
    for (name, t) in optim.chain(ema) {
        let n = t.dims()[0];
        let data = ArrayData::F32(crate::io::readback::f32s(t).await?);
        file.arrays.insert(name.clone(), NamedArray { name, shape: vec![n], data });
    }
    if let Some(c) = &trainer.cursor {
        let name = "cursor.order".to_string();
        let data = ArrayData::I64(c.order.iter().map(|&i| i as i64).collect());
        file.arrays.insert(name.clone(), NamedArray { name, shape: vec![c.order.len()], data });
    }
    let meta = Meta {
        config: trainer.config.clone(),
        step: trainer.step,
        rng: trainer.rng,
        history: trainer.history.clone(),
        optimizer_steps,
        cursor: trainer.cursor.as_ref().map(|c| CursorMeta {
            next_batch: c.next_batch,
            running: c.running,
            seconds: c.seconds,
        }),
        train_len,
    };
    let json = serde_json::to_string(&meta).map_err(|e| SaveError::Encode(EncodeError(e.to_string())))?;
    file.metadata.insert(META_KEY.into(), json);
    Ok(file.encode()?)
}

/// Rebuilds the trainer saved by [`to_bytes`] on `device`.
pub fn from_bytes(file_name: &str, bytes: &[u8], device: &Device, train_len: usize) -> Result<Trainer, FileError> {
    let (mut file, meta) = cifar_formats::checkpoint::read(file_name, bytes)?;
    let meta: Meta = serde_json::from_value(serde_json::Value::Object(meta))
        .map_err(|e| FileError::new(file_name, format!("checkpoint metadata is not valid ({e})")))?;
    if meta.train_len != train_len {
        return Err(FileError::new(
            file_name,
            format!("checkpoint was trained on {} images, the data now has {train_len}", meta.train_len),
        ));
    }
    let mut trainer =
        Trainer::new(meta.config.clone(), device, train_len).map_err(|e| FileError::new(file_name, e.to_string()))?;
    let ad = trainer.device.clone();
    trainer.model = load_model(trainer.model, &mut file, file_name, &ad)?;
    let mut take = |name: &str| -> Option<TensorData> {
        match file.arrays.remove(&format!("optim.{name}"))?.data {
            ArrayData::F32(v) => {
                let n = v.len();
                Some(TensorData::new(v, [n]))
            }
            ArrayData::I64(_) => None,
        }
    };
    let sizes = crate::train::optim::parameter_sizes(&trainer.model);
    trainer
        .optim
        .import(&meta.optimizer_steps, &mut take, &sizes, &ad.clone().inner())
        .map_err(|e| FileError::new(file_name, e.to_string()))?;
    if let Some(ema) = trainer.ema.as_mut() {
        let plain = ad.clone().inner();
        for (name, t) in &mut ema.tensors {
            let n = t.dims()[0];
            let v = file.take_f32(file_name, &format!("ema.{name}"), &[n])?;
            *t = burn::tensor::Tensor::from_data(TensorData::new(v, [n]), &plain);
        }
    }
    trainer.step = meta.step;
    trainer.rng = meta.rng;
    trainer.history = meta.history;
    if let Some(c) = meta.cursor {
        let order = match file.arrays.remove("cursor.order").map(|a| a.data) {
            Some(ArrayData::I64(v)) if v.len() == train_len => v.into_iter().map(|i| i as u32).collect(),
            _ => return Err(FileError::new(file_name, "tensor 'cursor.order' is missing or has the wrong length")),
        };
        trainer.cursor = Some(EpochCursor { order, next_batch: c.next_batch, running: c.running, seconds: c.seconds });
    }
    Ok(trainer)
}
