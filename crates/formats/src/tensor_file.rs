//! The safetensors container as this project writes and reads it: named f32 / int64 arrays
//! plus string metadata, decoded from untrusted bytes (a user's file, a browser upload) into
//! plain structs, and encoded so that the same content always gives the same bytes.

use std::collections::BTreeMap;

use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use thiserror::Error;

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

/// Why a [`TensorFile`] could not be turned into bytes.
#[derive(Debug, Clone, PartialEq, Error)]
#[error("encoding safetensors: {0}")]
pub struct EncodeError(pub String);

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
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
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
                    .map_err(|e| EncodeError(format!("tensor {name}: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let metadata = (!self.metadata.is_empty()).then(|| self.metadata.clone().into_iter().collect());
        let mut bytes = safetensors::serialize(views, metadata).map_err(|e| EncodeError(e.to_string()))?;
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

    /// Removes an f32 tensor, checking its shape and that every value is finite.
    pub fn take_f32(&mut self, file: &str, name: &str, shape: &[usize]) -> Result<Vec<f32>, FileError> {
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
                Ok(v)
            }
            ArrayData::I64(_) => Err(FileError::new(file, format!("tensor '{name}' is int64, expected float32"))),
        }
    }
}
