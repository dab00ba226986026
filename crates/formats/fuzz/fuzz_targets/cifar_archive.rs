//! `cifar-10-binary.tar.gz` (or any gzip a user drops on the page): extraction and assembly
//! give the dataset or a `DataError`; a header claiming a huge entry allocates nothing for it.
#![no_main]

use cifar_formats::cifar::{self, MAX_BATCH_BYTES};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    if let Ok(files) = cifar::extract_archive("cifar-10-binary.tar.gz", bytes) {
        assert_eq!(files.len(), cifar::ALL_FILES.len());
        assert!(files.iter().all(|(_, data)| data.len() <= MAX_BATCH_BYTES));
    }
    let _ = cifar::from_files(vec![("cifar-10-binary.tar.gz".into(), bytes.to_vec())], false);
});
