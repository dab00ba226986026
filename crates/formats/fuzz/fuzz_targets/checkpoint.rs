//! `checkpoint.safetensors` for `--resume`: the container and its metadata object parse or
//! give a `FileError` naming the file.
#![no_main]

use cifar_formats::checkpoint;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    if let Err(e) = checkpoint::read("checkpoint.safetensors", bytes) {
        assert!(e.to_string().starts_with("checkpoint.safetensors: "));
    }
});
