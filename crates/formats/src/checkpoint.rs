//! A checkpoint is a [`TensorFile`] whose metadata entry `checkpoint` holds a JSON object (the
//! recipe, counters, history, RNG state); the core types the object and checks its tensors.

use crate::tensor_file::{FileError, TensorFile};

/// The metadata entry that marks a checkpoint.
pub const META_KEY: &str = "checkpoint";

/// Decodes a checkpoint's container and its metadata object.
pub fn read(
    file_name: &str,
    bytes: &[u8],
) -> Result<(TensorFile, serde_json::Map<String, serde_json::Value>), FileError> {
    let file = TensorFile::decode(file_name, bytes)?;
    let json = file
        .metadata
        .get(META_KEY)
        .ok_or_else(|| FileError::new(file_name, "no checkpoint metadata: this is not a checkpoint file"))?;
    let meta = match serde_json::from_str(json) {
        Ok(serde_json::Value::Object(meta)) => meta,
        Ok(_) => return Err(FileError::new(file_name, "checkpoint metadata is not valid (not a JSON object)")),
        Err(e) => return Err(FileError::new(file_name, format!("checkpoint metadata is not valid ({e})"))),
    };
    Ok((file, meta))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_meta(json: Option<&str>) -> Vec<u8> {
        let mut file = TensorFile::default();
        if let Some(json) = json {
            file.metadata.insert(META_KEY.into(), json.into());
        }
        file.metadata.insert("format".into(), "pt".into());
        file.encode().unwrap()
    }

    #[test]
    fn metadata_must_be_a_json_object() {
        let (_, meta) = read("c", &with_meta(Some(r#"{"step": 3}"#))).unwrap();
        assert_eq!(meta["step"], 3);
        let e = read("c.safetensors", &with_meta(None)).unwrap_err().to_string();
        assert_eq!(e, "c.safetensors: no checkpoint metadata: this is not a checkpoint file");
        let e = read("c", &with_meta(Some("[1, 2]"))).unwrap_err().to_string();
        assert!(e.contains("not a JSON object"), "{e}");
        let e = read("c", &with_meta(Some("{"))).unwrap_err().to_string();
        assert!(e.contains("checkpoint metadata is not valid (EOF"), "{e}");
        let e = read("c", b"garbage").unwrap_err().to_string();
        assert!(e.starts_with("c: not a valid safetensors file"), "{e}");
    }
}
