//! The file formats the trainer reads from untrusted bytes: bytes in, plain structs out, no
//! Burn. The core turns the structs into tensors; `fuzz/` fuzzes every parser here (a fuzz
//! build instruments all it links, and without Burn it takes a minute).
//!
//! - [`cifar`]: CIFAR-10's `.bin` batches and the `.tar.gz` archive, MD5-checked.
//! - [`tensor_file`]: the safetensors container of weights and checkpoints.
//! - [`checkpoint`]: a checkpoint's container and metadata, before the core types them.

pub mod checkpoint;
pub mod cifar;
pub mod tensor_file;
