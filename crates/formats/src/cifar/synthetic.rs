//! Synthetic CIFAR-10 files for the tests of this crate and the CLI's: the real layout,
//! not the official bytes (so MD5 verification rejects them).
use super::{ALL_FILES, CLASSES, IMAGE_BYTES, RECORD_BYTES, RECORDS_PER_FILE};

/// Label of record `i` in a file generated with `seed`.
pub fn label(i: usize, seed: usize) -> u8 {
    ((i * 3 + seed) % CLASSES.len()) as u8
}

/// A batch of `records` records; pixels are a function of label and
/// channel, which keeps archives built from it small.
pub fn batch(records: usize, seed: usize) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(records * RECORD_BYTES);
    for i in 0..records {
        let label = label(i, seed);
        bytes.push(label);
        for channel in 0..3u8 {
            bytes.extend(std::iter::repeat_n(label * 20 + channel, IMAGE_BYTES / 3));
        }
    }
    bytes
}

/// All six full-size files, each with a different seed.
pub fn all_files() -> Vec<(String, Vec<u8>)> {
    ALL_FILES.iter().enumerate().map(|(seed, name)| (name.to_string(), batch(RECORDS_PER_FILE, seed))).collect()
}

/// A gzip tar archive laid out like the official one.
pub fn tar_gz(entries: &[(String, Vec<u8>)]) -> Vec<u8> {
    let encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut builder = tar::Builder::new(encoder);
    for (name, data) in entries {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        builder
            .append_data(&mut header, format!("cifar-10-batches-bin/{name}"), data.as_slice())
            .expect("writing to memory");
    }
    builder.into_inner().and_then(|gz| gz.finish()).expect("writing to memory")
}
