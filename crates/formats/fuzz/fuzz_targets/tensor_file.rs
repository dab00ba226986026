//! `model.safetensors` from a user (or a browser upload): the container decodes or gives a
//! `FileError`; what decodes re-encodes to a file that decodes to the same content.
#![no_main]

use cifar_formats::tensor_file::{ArrayData, TensorFile};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let Ok(file) = TensorFile::decode("model.safetensors", bytes) else { return };
    let again = TensorFile::decode("re-encoded", &file.encode().expect("decoded content encodes")).expect("decodes");
    assert_eq!(again.metadata, file.metadata);
    assert_eq!(again.arrays.len(), file.arrays.len());
    for (name, a) in &file.arrays {
        let b = &again.arrays[name];
        assert_eq!(a.shape, b.shape);
        match (&a.data, &b.data) {
            // Bit patterns, so that NaNs compare too.
            (ArrayData::F32(x), ArrayData::F32(y)) => {
                assert!(x.iter().map(|v| v.to_bits()).eq(y.iter().map(|v| v.to_bits())))
            }
            (ArrayData::I64(x), ArrayData::I64(y)) => assert_eq!(x, y),
            _ => panic!("{name} changed dtype"),
        }
    }
    // Taking each tensor with its own shape and with a wrong one.
    let mut file = file;
    let names: Vec<(String, Vec<usize>)> = file.arrays.iter().map(|(n, a)| (n.clone(), a.shape.clone())).collect();
    for (name, shape) in names {
        let mut wrong = shape.clone();
        wrong.push(1);
        assert!(file.take_f32("f", &name, &wrong).is_err());
        let _ = file.take_f32("f", &name, &shape);
    }
});
