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
//! | `fc.weight`                      | `fc.weight` transposed, × `logit_scale` | `[10, 512]` |
//!
//! The logit scale is folded into `fc.weight` here, in both directions, so every file (and the
//! weight average, which averages these tensors) holds the function a plain PyTorch model
//! computes; a power of two folds and unfolds exactly.

use burn::module::{Param, RunningState};
use burn::tensor::{Device, Tensor, TensorData};
use thiserror::Error;

use crate::error::DeviceError;
use crate::model::{ConvBn, Model, ModelConfig};

pub use cifar_formats::tensor_file::{ArrayData, EncodeError, FileError, NamedArray, TensorFile};

/// Why weights or a checkpoint could not be turned into bytes.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum SaveError {
    #[error(transparent)]
    Device(#[from] DeviceError),
    #[error(transparent)]
    Encode(#[from] EncodeError),
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
    let w = w.reshape([shape[0] * shape[1]]).mul_scalar(model.logit_scale);
    out.push(("fc.weight".into(), shape.clone(), w));
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
        let config = serde_json::from_str(json)
            .and_then(ModelConfig::from_value)
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
    let config = ModelConfig::new().with_width(c0 as f64 / 64.0).with_num_classes(classes);
    // Checked before the model is built from it: a small file must not ask for a giant one.
    config
        .validate()
        .map_err(|e| FileError::new(file_name, format!("tensor 'prep.0.weight' has {c0} output channels: {e}")))?;
    Ok(config)
}

/// Rebuilds `model` with new tensors, visited in [`model_tensors`] order and layout: `f` gets
/// each tensor's name, shape (PyTorch layout) and current value, flattened, and returns its
/// replacement, flattened. Parameters get new ids: for loading and for evaluation copies.
pub fn try_map_tensors<E>(
    model: Model,
    mut f: impl FnMut(&str, &[usize], Tensor<1>) -> Result<Tensor<1>, E>,
) -> Result<Model, E> {
    let mut model = model.try_map_blocks(|conv, bn, block: ConvBn| {
        let mut block = block;
        let w = block.conv.weight.val();
        let w_shape = w.dims();
        let n: usize = w_shape.iter().product();
        let w = f(&format!("{conv}.weight"), &w_shape, w.reshape([n]))?;
        block.conv.weight = Param::from_tensor(w.reshape(w_shape));
        let c = block.bn.gamma.dims()[0];
        block.bn.gamma = Param::from_tensor(f(&format!("{bn}.weight"), &[c], block.bn.gamma.val())?);
        block.bn.beta = Param::from_tensor(f(&format!("{bn}.bias"), &[c], block.bn.beta.val())?);
        let mean = f(&format!("{bn}.running_mean"), &[c], block.bn.running_mean.value_sync())?;
        block.bn.running_mean = RunningState::new(mean);
        let var = f(&format!("{bn}.running_var"), &[c], block.bn.running_var.value_sync())?;
        block.bn.running_var = RunningState::new(var);
        Ok(block)
    })?;
    // Burn stores [in, out]; PyTorch's nn.Linear stores [out, in].
    let [d_in, d_out] = model.fc.weight.dims();
    let scale = model.logit_scale;
    let w = model.fc.weight.val().transpose().reshape([d_out * d_in]);
    let w = f("fc.weight", &[d_out, d_in], w.mul_scalar(scale))?.div_scalar(scale);
    model.fc.weight = Param::from_tensor(w.reshape([d_out, d_in]).transpose());
    Ok(model)
}

/// [`try_map_tensors`] for replacements that cannot fail.
pub fn map_tensors(model: Model, mut f: impl FnMut(&str, &[usize], Tensor<1>) -> Tensor<1>) -> Model {
    try_map_tensors(model, |name, shape, t| Ok::<_, std::convert::Infallible>(f(name, shape, t)))
        .unwrap_or_else(|e| match e {})
}

/// Moves the model's tensors out of `file` into `model` (strict: every tensor must be present
/// with the right shape). Other tensors stay in `file` for the caller (e.g. optimizer state).
pub fn load_model(model: Model, file: &mut TensorFile, file_name: &str, device: &Device) -> Result<Model, FileError> {
    let model = try_map_tensors(model, |name, shape, _| {
        let n = shape.iter().product::<usize>();
        file.take_f32(file_name, name, shape).map(|v| Tensor::<1>::from_data(TensorData::new(v, [n]), device))
    })?;
    for (_, bn, _) in model.blocks() {
        file.arrays.remove(&format!("{bn}.num_batches_tracked"));
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn file_with(prep_channels: usize, classes: usize) -> TensorFile {
        let mut file = TensorFile::default();
        for (name, shape) in [("prep.0.weight", vec![prep_channels, 3, 3, 3]), ("fc.weight", vec![classes, 512])] {
            // Only the shapes are read here.
            file.arrays.insert(name.into(), NamedArray { name: name.into(), shape, data: ArrayData::F32(vec![]) });
        }
        file
    }

    #[test]
    fn a_model_inferred_from_shapes_is_validated_before_it_is_built() {
        assert_eq!(model_config_of("w", &file_with(64, 10)).unwrap().width, 1.0);
        // 2^20 output channels would be a width-16384 model: refused, not allocated.
        let e = model_config_of("w.safetensors", &file_with(1 << 20, 10)).unwrap_err().to_string();
        assert!(
            e.starts_with("w.safetensors: tensor 'prep.0.weight' has 1048576 output channels: width must be in"),
            "{e}"
        );
        let e = model_config_of("w", &file_with(64, 0)).unwrap_err().to_string();
        assert!(e.contains("num_classes must be at least 1"), "{e}");
    }
}
