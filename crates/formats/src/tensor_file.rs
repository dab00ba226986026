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
                // Half-precision weights (a model saved as f16 or bf16) are widened to f32
                // exactly: every f16 and bf16 value is an f32 value.
                Dtype::F16 => ArrayData::F32(
                    raw.chunks_exact(2).map(|c| f32_from_f16(u16::from_le_bytes(c.try_into().unwrap()))).collect(),
                ),
                Dtype::BF16 => ArrayData::F32(
                    raw.chunks_exact(2)
                        .map(|c| f32::from_bits((u16::from_le_bytes(c.try_into().unwrap()) as u32) << 16))
                        .collect(),
                ),
                other => {
                    return Err(bad(format!(
                        "tensor '{name}' has dtype {other:?}; only F32, F16, BF16 and I64 are supported"
                    )));
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

/// The f32 value of an IEEE 754 half-precision number (exact: f32 holds every f16).
pub fn f32_from_f16(h: u16) -> f32 {
    let negative = h & 0x8000 != 0;
    let (exponent, mantissa) = ((h >> 10) & 0x1f, (h & 0x3ff) as u32);
    let magnitude = match exponent {
        // Zero and the subnormals: mantissa · 2⁻²⁴.
        0 => mantissa as f32 / (1u32 << 24) as f32,
        // Infinity and NaN (the payload kept).
        0x1f => f32::from_bits(0x7f80_0000 | mantissa << 13),
        e => f32::from_bits(((e as u32 + 127 - 15) << 23) | mantissa << 13),
    };
    if negative { -magnitude } else { magnitude }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_precision_values_widen_exactly() {
        for (h, want) in [
            (0x3c00, 1.0f32),
            (0xc000, -2.0),
            (0x3555, 0.333_251_95),
            (0x7bff, 65504.0),
            (0x0001, 2f32.powi(-24)),
            (0x03ff, 1023.0 * 2f32.powi(-24)),
            (0x0400, 2f32.powi(-14)),
            (0x7c00, f32::INFINITY),
            (0xfc00, f32::NEG_INFINITY),
        ] {
            assert_eq!(f32_from_f16(h), want, "{h:#06x}");
        }
        assert!(f32_from_f16(0x7e00).is_nan());
        assert!(f32_from_f16(0x8000) == 0.0 && f32_from_f16(0x8000).is_sign_negative());
    }

    fn file_of(dtype: Dtype, values: &[u16]) -> Vec<u8> {
        let raw: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let view = TensorView::new(dtype, vec![values.len()], &raw).unwrap();
        safetensors::serialize([("w", view)], None).unwrap()
    }

    #[test]
    fn f16_and_bf16_tensors_load_as_f32_and_non_finite_ones_are_refused() {
        let mut f = TensorFile::decode("h.safetensors", &file_of(Dtype::F16, &[0x3c00, 0xc000, 0x0001])).unwrap();
        assert_eq!(f.take_f32("h.safetensors", "w", &[3]).unwrap(), vec![1.0, -2.0, 2f32.powi(-24)]);
        let mut f = TensorFile::decode("b.safetensors", &file_of(Dtype::BF16, &[0x3f80, 0xc020, 0x3eab])).unwrap();
        assert_eq!(f.take_f32("b.safetensors", "w", &[3]).unwrap(), vec![1.0, -2.5, f32::from_bits(0x3eab_0000)]);
        let mut f = TensorFile::decode("inf.safetensors", &file_of(Dtype::F16, &[0x3c00, 0x7c00])).unwrap();
        let e = f.take_f32("inf.safetensors", "w", &[2]).unwrap_err().to_string();
        assert!(e.contains("inf.safetensors") && e.contains("non-finite value at index 1"), "{e}");
        let e = TensorFile::decode(
            "u8.safetensors",
            &safetensors::serialize([("w", TensorView::new(Dtype::U8, vec![2], &[1, 2]).unwrap())], None).unwrap(),
        )
        .err()
        .unwrap()
        .to_string();
        assert!(e.contains("dtype U8; only F32, F16, BF16 and I64"), "{e}");
    }
}
