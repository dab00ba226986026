//! A `.bin` batch: any bytes parse to records or a `DataError`, never a panic.
#![no_main]

use cifar_formats::cifar::{self, IMAGE_BYTES, RECORD_BYTES};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    for strict in [false, true] {
        if let Ok(split) = cifar::parse_batch("data_batch_1.bin", bytes, strict) {
            assert_eq!(split.len() * RECORD_BYTES, bytes.len());
            assert_eq!(split.images.len(), split.len() * IMAGE_BYTES);
            assert!(split.labels.iter().all(|&l| usize::from(l) < cifar::CLASSES.len()));
        }
    }
    let _ = cifar::verify_md5("test_batch.bin", bytes);
    // Loose files as the page receives them: any name, any bytes.
    let _ = cifar::from_files(vec![("test_batch.bin".into(), bytes.to_vec())], true);
});
