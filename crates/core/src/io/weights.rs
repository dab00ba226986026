//! `model.safetensors` with PyTorch's `state_dict` names and layouts, and the tensor-file
//! container used by checkpoints. Platform-free: bytes in, bytes out (the browser downloads
//! and uploads the same bytes); read-backs are async so wasm can await them.
//!
//! | PyTorch name                     | Burn field               | layout                  |
//! |----------------------------------|--------------------------|-------------------------|
//! | `prep.0.weight`                  | `prep.conv.weight`       | `[out, in, 3, 3]`       |
//! | `prep.1.weight` / `.bias`        | `prep.bn.gamma` / `beta` | `[C]`                   |
//! | `prep.1.running_mean` / `_var`   | `prep.bn.running_*`      | `[C]`                   |
//! | `prep.1.num_batches_tracked`     | (training steps)         | int64 scalar            |
//! | `layer1.0`, `layer1.2` (conv, BN; `layer1.1` is the MaxPool)                          |||
//! | `res1.0`, `res1.1`, `res1.4`, `res1.5` (conv, BN, conv, BN)                           |||
//! | `layer2.0`/`.2`, `layer3.0`/`.2`, `res3.0`/`.1`/`.4`/`.5` likewise                    |||
//! | `fc.weight`                      | `fc.weight` transposed   | `[10, 512]`             |

use std::collections::BTreeMap;

use burn::module::{Param, RunningState};
use burn::tensor::{Device, Tensor, TensorData};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use thiserror::Error;

use crate::error::DeviceError;
use crate::model::{ConvBn, Model, ModelConfig};

/// An error about one file read: `"{file}: {problem}"`.
#[derive(Debug, Clone, PartialEq, Error)]
#[error("{file}: {problem}")]
pub struct FileError {
    pub file: String,
    pub problem: String,
}

impl FileError {
    pub fn new(file: impl Into<String>, problem: impl Into<String>) -> Self {
        Self { file: file.into(), problem: problem.into() }
    }
}

/// Why weights or a checkpoint could not be turned into bytes.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum SaveError {
    #[error(transparent)]
    Device(#[from] DeviceError),
    #[error("encoding safetensors: {0}")]
    Encode(String),
}

#[derive(Debug, Clone, PartialEq)]
pub enum ArrayData {
    F32(Vec<f32>),
    I64(Vec<i64>),
}

/// A host-side tensor with a name, as stored in a safetensors file.
#[derive(Debug, Clone, PartialEq)]
pub struct NamedArray {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: ArrayData,
}

/// The content of a safetensors file: arrays by name plus string metadata.
#[derive(Debug, Clone, Default)]
pub struct TensorFile {
    pub arrays: BTreeMap<String, NamedArray>,
    pub metadata: BTreeMap<String, String>,
}

impl TensorFile {
    /// The file's bytes; the same content always gives the same bytes.
    pub fn encode(&self) -> Result<Vec<u8>, SaveError> {
        let bytes: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = self
            .arrays
            .values()
            .map(|a| {
                let (dtype, raw) = match &a.data {
                    ArrayData::F32(v) => (Dtype::F32, v.iter().flat_map(|x| x.to_le_bytes()).collect()),
                    ArrayData::I64(v) => (Dtype::I64, v.iter().flat_map(|x| x.to_le_bytes()).collect()),
                };
                (a.name.clone(), dtype, a.shape.clone(), raw)
            })
            .collect();
        let views = bytes
            .iter()
            .map(|(name, dtype, shape, raw)| {
                TensorView::new(*dtype, shape.clone(), raw)
                    .map(|v| (name.clone(), v))
                    .map_err(|e| SaveError::Encode(format!("tensor {name}: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let metadata = (!self.metadata.is_empty()).then(|| self.metadata.clone().into_iter().collect());
        let mut bytes = safetensors::serialize(views, metadata).map_err(|e| SaveError::Encode(e.to_string()))?;
        self.sort_metadata(&mut bytes);
        Ok(bytes)
    }

    /// safetensors writes `__metadata__` in a `HashMap`'s random order, so two identical runs
    /// would differ in bytes. It is the header's first entry, written compactly: the sorted
    /// object has the same length and replaces it in place.
    fn sort_metadata(&self, bytes: &mut [u8]) {
        const PREFIX: &[u8] = b"{\"__metadata__\":";
        let Ok(sorted) = serde_json::to_vec(&self.metadata) else { return };
        let start = 8 + PREFIX.len();
        let Some(slot) = bytes.get(start..start + sorted.len()) else { return };
        let same = serde_json::from_slice::<BTreeMap<String, String>>(slot).is_ok_and(|m| m == self.metadata);
        if self.metadata.is_empty() || !bytes[8..].starts_with(PREFIX) || !same {
            return;
        }
        bytes[start..start + sorted.len()].copy_from_slice(&sorted);
    }

    pub fn decode(file: &str, bytes: &[u8]) -> Result<Self, FileError> {
        let bad = |p: String| FileError::new(file, p);
        let st = SafeTensors::deserialize(bytes).map_err(|e| bad(format!("not a valid safetensors file ({e})")))?;
        let (_, meta) =
            SafeTensors::read_metadata(bytes).map_err(|e| bad(format!("not a valid safetensors file ({e})")))?;
        let mut arrays = BTreeMap::new();
        for (name, view) in st.tensors() {
            let raw = view.data();
            let data = match view.dtype() {
                Dtype::F32 => {
                    ArrayData::F32(raw.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect())
                }
                Dtype::I64 => {
                    ArrayData::I64(raw.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect())
                }
                other => {
                    return Err(bad(format!("tensor '{name}' has dtype {other:?}; only F32 and I64 are supported")));
                }
            };
            arrays.insert(name.clone(), NamedArray { name, shape: view.shape().to_vec(), data });
        }
        Ok(Self { arrays, metadata: meta.metadata().clone().unwrap_or_default().into_iter().collect() })
    }

    /// Removes an f32 tensor, checking its shape.
    pub fn take_f32(&mut self, file: &str, name: &str, shape: &[usize]) -> Result<TensorData, FileError> {
        let a = self.arrays.remove(name).ok_or_else(|| FileError::new(file, format!("tensor '{name}' is missing")))?;
        if a.shape != shape {
            return Err(FileError::new(
                file,
                format!("tensor '{name}' has shape {:?}, the model expects {shape:?}", a.shape),
            ));
        }
        match a.data {
            ArrayData::F32(v) => {
                if let Some(i) = v.iter().position(|x| !x.is_finite()) {
                    return Err(FileError::new(file, format!("tensor '{name}' holds a non-finite value at index {i}")));
                }
                Ok(TensorData::new(v, shape.to_vec()))
            }
            ArrayData::I64(_) => Err(FileError::new(file, format!("tensor '{name}' is int64, expected float32"))),
        }
    }
}

/// The model's tensors in PyTorch names and layouts, still on the device (flattened).
pub fn model_tensors(model: &Model) -> Vec<(String, Vec<usize>, Tensor<1>)> {
    let mut out = Vec::new();
    for (conv, bn, block) in model.blocks() {
        let w = block.conv.weight.val();
        let shape = w.dims().to_vec();
        let n: usize = shape.iter().product();
        out.push((format!("{conv}.weight"), shape, w.reshape([n])));
        let c = block.bn.gamma.dims()[0];
        out.push((format!("{bn}.weight"), vec![c], block.bn.gamma.val()));
        out.push((format!("{bn}.bias"), vec![c], block.bn.beta.val()));
        // value_sync: the latest training step's statistics may not be folded in yet.
        out.push((format!("{bn}.running_mean"), vec![c], block.bn.running_mean.value_sync()));
        out.push((format!("{bn}.running_var"), vec![c], block.bn.running_var.value_sync()));
    }
    // Burn stores [in, out]; PyTorch's nn.Linear stores [out, in].
    let w = model.fc.weight.val().transpose();
    let shape = w.dims().to_vec();
    out.push(("fc.weight".into(), shape.clone(), w.reshape([shape[0] * shape[1]])));
    out
}

/// `model.safetensors` content. `batches_tracked` fills PyTorch's `num_batches_tracked`.
pub async fn model_file(model: &Model, config: &ModelConfig, batches_tracked: u64) -> Result<TensorFile, DeviceError> {
    let mut file = TensorFile::default();
    for (name, shape, t) in model_tensors(model) {
        let data = ArrayData::F32(crate::io::readback::f32s(t.detach()).await?);
        file.arrays.insert(name.clone(), NamedArray { name, shape, data });
    }
    for (_, bn, _) in model.blocks() {
        let name = format!("{bn}.num_batches_tracked");
        let data = ArrayData::I64(vec![batches_tracked as i64]);
        file.arrays.insert(name.clone(), NamedArray { name, shape: vec![], data });
    }
    file.metadata.insert("format".into(), "pt".into());
    file.metadata.insert("model_config".into(), config.to_json());
    Ok(file)
}

impl ModelConfig {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("config serialises")
    }
}

/// The model configuration a weights file was saved with: its metadata when present (files
/// we wrote), otherwise inferred from the tensor shapes (files written by PyTorch).
pub fn model_config_of(file_name: &str, file: &TensorFile) -> Result<ModelConfig, FileError> {
    if let Some(json) = file.metadata.get("model_config") {
        let config: ModelConfig = serde_json::from_str(json)
            .map_err(|e| FileError::new(file_name, format!("metadata model_config is not valid ({e})")))?;
        config.validate().map_err(|e| FileError::new(file_name, format!("metadata model_config: {e}")))?;
        return Ok(config);
    }
    let prep = file.arrays.get("prep.0.weight").ok_or_else(|| {
        FileError::new(file_name, "tensor 'prep.0.weight' is missing: not a weights file of this model")
    })?;
    let fc = file.arrays.get("fc.weight").ok_or_else(|| FileError::new(file_name, "tensor 'fc.weight' is missing"))?;
    let (Some(&c0), Some(&classes)) = (prep.shape.first(), fc.shape.first()) else {
        return Err(FileError::new(file_name, "tensors 'prep.0.weight' and 'fc.weight' have no dimensions"));
    };
    Ok(ModelConfig::new().with_width(c0 as f64 / 64.0).with_num_classes(classes))
}

/// Moves the model's tensors out of `file` into `model` (strict: every tensor must be present
/// with the right shape). Other tensors stay in `file` for the caller (e.g. optimizer state).
pub fn load_model(model: Model, file: &mut TensorFile, file_name: &str, device: &Device) -> Result<Model, FileError> {
    let model = model.try_map_blocks(|conv, bn, block: ConvBn| {
        let mut block = block;
        let w_shape = block.conv.weight.dims().to_vec();
        let c = block.bn.gamma.dims()[0];
        let w = file.take_f32(file_name, &format!("{conv}.weight"), &w_shape)?;
        block.conv.weight = Param::from_tensor(Tensor::from_data(w, device));
        let mut vector = |suffix: &str| {
            file.take_f32(file_name, &format!("{bn}.{suffix}"), &[c]).map(|d| Tensor::<1>::from_data(d, device))
        };
        block.bn.gamma = Param::from_tensor(vector("weight")?);
        block.bn.beta = Param::from_tensor(vector("bias")?);
        block.bn.running_mean = RunningState::new(vector("running_mean")?);
        let var = vector("running_var")?;
        block.bn.running_var = RunningState::new(var);
        file.arrays.remove(&format!("{bn}.num_batches_tracked"));
        Ok(block)
    })?;
    let [d_in, d_out] = model.fc.weight.dims();
    let w = file.take_f32(file_name, "fc.weight", &[d_out, d_in])?;
    let mut model = model;
    model.fc.weight = Param::from_tensor(Tensor::<2>::from_data(w, device).transpose());
    Ok(model)
}

/// Parses `model.safetensors` bytes into a model on `device`; unexpected extra tensors are an
/// error (they mean the file belongs to another network).
pub fn model_from_bytes(file_name: &str, bytes: &[u8], device: &Device) -> Result<(Model, ModelConfig), FileError> {
    let mut file = TensorFile::decode(file_name, bytes)?;
    let config = model_config_of(file_name, &file)?;
    let model = load_model(config.init(device), &mut file, file_name, device)?;
    if let Some(extra) = file.arrays.keys().next() {
        return Err(FileError::new(
            file_name,
            format!(
                "unexpected tensor '{extra}' ({} unexpected in all): not a weights file of this model",
                file.arrays.len()
            ),
        ));
    }
    Ok((model, config))
}
