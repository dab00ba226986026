//! CIFAR-10 binary format: parsing, validation and assembly from in-memory files.
//!
//! Everything here works on byte slices so the same code serves the native loader
//! (`download.rs`) and the browser, where the user picks or drops the files.

/// Small valid CIFAR-10 files for the tests of every crate (the `test-support` feature).
#[cfg(any(test, feature = "test-support"))]
pub mod synthetic;

use std::collections::HashMap;
use std::fmt;
use std::io::Read;

use md5::{Digest, Md5};
use thiserror::Error;

pub const CLASSES: [&str; 10] =
    ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"];

/// One 32×32 RGB image, channel-planar (1024 R, then G, then B bytes).
pub const IMAGE_BYTES: usize = 3072;
/// A label byte followed by the image.
pub const RECORD_BYTES: usize = 3073;
pub const RECORDS_PER_FILE: usize = 10_000;
/// The size of a full batch file.
pub const MAX_BATCH_BYTES: usize = RECORDS_PER_FILE * RECORD_BYTES;

pub const TRAIN_FILES: [&str; 5] =
    ["data_batch_1.bin", "data_batch_2.bin", "data_batch_3.bin", "data_batch_4.bin", "data_batch_5.bin"];
pub const TEST_FILE: &str = "test_batch.bin";
/// The six batch files in the order they are loaded.
pub const ALL_FILES: [&str; 6] =
    [TRAIN_FILES[0], TRAIN_FILES[1], TRAIN_FILES[2], TRAIN_FILES[3], TRAIN_FILES[4], TEST_FILE];
pub const ARCHIVE_NAME: &str = "cifar-10-binary.tar.gz";

/// Per-channel mean and standard deviation of the training set, for pixel / 255.
pub const MEAN: [f32; 3] = [0.4914, 0.4822, 0.4465];
pub const STD: [f32; 3] = [0.2470, 0.2435, 0.2616];

const OFFICIAL_MD5: [(&str, &str); 7] = [
    ("data_batch_1.bin", "5dd7e06a14cb22eb9f671a540d1b7c25"),
    ("data_batch_2.bin", "5ea93a67294ea407fff1d09f752e9692"),
    ("data_batch_3.bin", "942cd6a4bcdd0dd3c604fbe906cb4421"),
    ("data_batch_4.bin", "ae636b3ba5c66a11e91e8cb52e771fcb"),
    ("data_batch_5.bin", "53f37980c15c3d472c316c40844f3f0d"),
    ("test_batch.bin", "803d5f7f4d78ea53de84dbe85f74fb6d"),
    (ARCHIVE_NAME, "c32a1d4ab5d03f1284b67883e8d87530"),
];

/// The published MD5 of an official CIFAR-10 file, looked up by base name
/// (so a full path works too).
pub fn official_md5(file_name: &str) -> Option<&'static str> {
    let base = base_name(file_name);
    OFFICIAL_MD5.iter().find(|(name, _)| *name == base).map(|&(_, md5)| md5)
}

/// Lower-case hex MD5 of `bytes`.
pub fn md5_hex(bytes: &[u8]) -> String {
    Md5::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// Last path component; handles both separators because browser and Windows
/// callers may hand us either.
fn base_name(name: &str) -> &str {
    name.rsplit(['/', '\\']).next().unwrap_or(name)
}

/// Gzip magic number; archives are recognised by content, not by name, so a
/// renamed download still works.
pub fn is_gzip(bytes: &[u8]) -> bool {
    bytes.starts_with(&[0x1f, 0x8b])
}

#[derive(Debug, Error)]
pub enum DataError {
    /// The file length is not a multiple of [`RECORD_BYTES`].
    #[error("{file}: {len} bytes is not a whole number of {RECORD_BYTES}-byte records")]
    BadSize { file: String, len: usize },
    /// A whole number of records, but not [`RECORDS_PER_FILE`] of them.
    #[error("{file}: expected {expected} records ({} bytes), found {found}", expected * RECORD_BYTES)]
    WrongCount { file: String, expected: usize, found: usize },
    /// `record` is 0-based.
    #[error("{file}: record {record} has label byte {label} (must be 0..=9)")]
    BadLabel { file: String, record: usize, label: u8 },
    #[error(
        "{file}: MD5 checksum mismatch (expected {expected}, got {actual}): \
         the file is corrupt or not the official CIFAR-10 binary"
    )]
    Checksum { file: String, expected: String, actual: String },
    #[error("{file}: not a gzip tar archive ({reason})")]
    NotArchive { file: String, reason: String },
    #[error("{archive}: missing {file}")]
    MissingInArchive { archive: String, file: String },
    #[error("{archive}: {file} in it is larger than a CIFAR-10 batch ({MAX_BATCH_BYTES} bytes)")]
    EntryTooLarge { archive: String, file: String },
    /// `hint` tells the user how to provide the file; may be empty.
    #[error("{file}: file not found{}{hint}", if hint.is_empty() { "" } else { ". " })]
    Missing { file: String, hint: String },
    #[error("{file}: {problem}")]
    Io { file: String, problem: String },
}

/// A set of labelled images, stored exactly as in the CIFAR-10 binary files.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Split {
    /// `len() * IMAGE_BYTES` bytes; each image channel-planar, rows top to bottom.
    pub images: Vec<u8>,
    /// One class index (0..=9) per image.
    pub labels: Vec<u8>,
}

// Deriving Debug would dump up to 150 MB of pixels into a log line.
impl fmt::Debug for Split {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Split").field("len", &self.len()).finish_non_exhaustive()
    }
}

impl Split {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The `IMAGE_BYTES` bytes of image `i`. Panics if `i >= len()`.
    pub fn image(&self, i: usize) -> &[u8] {
        &self.images[i * IMAGE_BYTES..(i + 1) * IMAGE_BYTES]
    }

    /// Class index of image `i`. Panics if `i >= len()`.
    pub fn label(&self, i: usize) -> usize {
        usize::from(self.labels[i])
    }

    /// The images at `indices`, in that order (repeats allowed). Panics on an
    /// out-of-range index.
    pub fn subset(&self, indices: &[usize]) -> Split {
        let mut images = Vec::with_capacity(indices.len() * IMAGE_BYTES);
        let mut labels = Vec::with_capacity(indices.len());
        for &i in indices {
            images.extend_from_slice(self.image(i));
            labels.push(self.labels[i]);
        }
        Split { images, labels }
    }

    /// The first `n` images, or all of them if there are fewer.
    pub fn take(&self, n: usize) -> Split {
        let n = n.min(self.len());
        Split { images: self.images[..n * IMAGE_BYTES].to_vec(), labels: self.labels[..n].to_vec() }
    }

    pub fn append(&mut self, mut other: Split) {
        self.images.append(&mut other.images);
        self.labels.append(&mut other.labels);
    }

    /// The first `per_class` images of each class, in file order. A class with
    /// fewer images contributes all it has.
    pub fn balanced_subset(&self, per_class: usize) -> Split {
        let mut seen = [0usize; CLASSES.len()];
        let indices: Vec<usize> = (0..self.len())
            .filter(|&i| {
                let count = &mut seen[self.label(i)];
                *count += 1;
                *count <= per_class
            })
            .collect();
        self.subset(&indices)
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cifar10 {
    pub train: Split,
    pub test: Split,
}

/// Parses one CIFAR-10 batch file. `file_name` is only used in error messages.
/// With `strict_count` the file must hold exactly [`RECORDS_PER_FILE`] records.
pub fn parse_batch(file_name: &str, bytes: &[u8], strict_count: bool) -> Result<Split, DataError> {
    if !bytes.len().is_multiple_of(RECORD_BYTES) {
        return Err(DataError::BadSize { file: file_name.to_owned(), len: bytes.len() });
    }
    let count = bytes.len() / RECORD_BYTES;
    if strict_count && count != RECORDS_PER_FILE {
        return Err(DataError::WrongCount { file: file_name.to_owned(), expected: RECORDS_PER_FILE, found: count });
    }
    let mut split = Split { images: Vec::with_capacity(count * IMAGE_BYTES), labels: Vec::with_capacity(count) };
    for (record, chunk) in bytes.chunks_exact(RECORD_BYTES).enumerate() {
        let label = chunk[0];
        if usize::from(label) >= CLASSES.len() {
            return Err(DataError::BadLabel { file: file_name.to_owned(), record, label });
        }
        split.labels.push(label);
        split.images.extend_from_slice(&chunk[1..]);
    }
    Ok(split)
}

/// Checks `bytes` against the published MD5 for `file_name`'s base name.
/// Files without a published checksum pass.
pub fn verify_md5(file_name: &str, bytes: &[u8]) -> Result<(), DataError> {
    let Some(expected) = official_md5(file_name) else {
        return Ok(());
    };
    let actual = md5_hex(bytes);
    if actual == expected {
        Ok(())
    } else {
        Err(DataError::Checksum { file: file_name.to_owned(), expected: expected.to_owned(), actual })
    }
}

/// `text` with control and non-ASCII characters escaped and cut to 160 characters: a
/// garbage archive puts its bytes into the tar reader's messages.
fn printable(text: &str) -> String {
    let escaped: String = text.chars().flat_map(|c| c.escape_default()).collect();
    match escaped.char_indices().nth(160) {
        Some((i, _)) => format!("{}...", &escaped[..i]),
        None => escaped,
    }
}

/// Extracts the six batch files (base name, bytes) from a gzip tar archive, in
/// [`ALL_FILES`] order. Entries are matched on base name so the archive's
/// top-level folder does not matter; other entries are skipped.
pub fn extract_archive(archive_name: &str, bytes: &[u8]) -> Result<Vec<(String, Vec<u8>)>, DataError> {
    let not_archive =
        |e: std::io::Error| DataError::NotArchive { file: archive_name.to_owned(), reason: printable(&e.to_string()) };
    if !is_gzip(bytes) {
        return Err(DataError::NotArchive { file: archive_name.to_owned(), reason: "no gzip header".to_owned() });
    }
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(bytes));
    let mut found: HashMap<&'static str, Vec<u8>> = HashMap::new();
    for entry in archive.entries().map_err(not_archive)? {
        let mut entry = entry.map_err(not_archive)?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let path = entry.path().map_err(not_archive)?;
        let Some(name) = path.file_name().and_then(|n| n.to_str()).and_then(|n| ALL_FILES.iter().find(|&&f| f == n))
        else {
            continue;
        };
        // The header's size is not trusted for the allocation, and no batch file is larger
        // than a full one: a small archive cannot claim gigabytes.
        let mut data = Vec::with_capacity(usize::try_from(entry.size()).unwrap_or(0).min(MAX_BATCH_BYTES));
        (&mut entry).take(MAX_BATCH_BYTES as u64 + 1).read_to_end(&mut data).map_err(not_archive)?;
        if data.len() > MAX_BATCH_BYTES {
            return Err(DataError::EntryTooLarge { archive: archive_name.to_owned(), file: name.to_string() });
        }
        found.insert(name, data);
    }
    ALL_FILES
        .iter()
        .map(|&name| match found.remove(name) {
            Some(data) => Ok((name.to_owned(), data)),
            None => Err(DataError::MissingInArchive { archive: archive_name.to_owned(), file: name.to_owned() }),
        })
        .collect()
}

/// The training batch files that hold the first `train_images` images (0: all of them).
pub fn train_files_for(train_images: usize) -> usize {
    match train_images {
        0 => TRAIN_FILES.len(),
        n => n.div_ceil(RECORDS_PER_FILE).min(TRAIN_FILES.len()),
    }
}

/// Builds the dataset from the first `train_files` training batch files then the test batch,
/// yielded as (name, bytes) in [`ALL_FILES`] order; names are only used in error messages.
/// Taking an iterator lets native callers read one file at a time instead of holding all
/// the raw files in memory next to the parsed copy.
pub fn assemble(
    files: impl IntoIterator<Item = Result<(String, Vec<u8>), DataError>>,
    verify: bool,
    train_files: usize,
) -> Result<Cifar10, DataError> {
    let mut data = Cifar10::default();
    let mut count = 0;
    for file in files {
        let (name, bytes) = file?;
        if verify {
            verify_md5(&name, &bytes)?;
        }
        let split = parse_batch(&name, &bytes, true)?;
        if count < train_files {
            data.train.append(split);
        } else {
            data.test = split;
        }
        count += 1;
    }
    assert_eq!(count, train_files + 1, "assemble takes {train_files} training batch files and the test batch");
    Ok(data)
}

/// Assembles the dataset from user-supplied files: any mix of the six `.bin`
/// files and a gzip tar archive containing them (recognised by its gzip
/// header, whatever its name). Other files are ignored, so a whole folder can
/// be passed. Loose `.bin` files take precedence over archive entries.
///
/// With `verify`, every batch is checked against its official MD5, except that
/// an archive named [`ARCHIVE_NAME`] is checked as a whole instead (cheaper,
/// and it covers its contents).
pub fn from_files(files: Vec<(String, Vec<u8>)>, verify: bool) -> Result<Cifar10, DataError> {
    // base name -> (name for messages, bytes, already covered by a verified archive)
    let mut batches: HashMap<&'static str, (String, Vec<u8>, bool)> = HashMap::new();
    let mut last_archive: Option<String> = None;
    for (name, bytes) in files {
        if is_gzip(&bytes) {
            let archive_verified = verify && base_name(&name) == ARCHIVE_NAME;
            if archive_verified {
                verify_md5(&name, &bytes)?;
            }
            for (entry, data) in extract_archive(&name, &bytes)? {
                let Some(&key) = ALL_FILES.iter().find(|&&f| f == entry) else {
                    continue;
                };
                batches.entry(key).or_insert((entry, data, archive_verified));
            }
            last_archive = Some(name);
        } else if let Some(&key) = ALL_FILES.iter().find(|&&f| f == base_name(&name)) {
            batches.insert(key, (name, bytes, false));
        }
    }

    let mut ordered = Vec::with_capacity(ALL_FILES.len());
    for name in ALL_FILES {
        let Some((shown, bytes, covered)) = batches.remove(name) else {
            return Err(match last_archive {
                Some(archive) => DataError::MissingInArchive { archive, file: name.to_owned() },
                None => DataError::Missing {
                    file: name.to_owned(),
                    hint: format!(
                        "Provide all six CIFAR-10 binary files ({}) or the {ARCHIVE_NAME} archive",
                        ALL_FILES.join(", ")
                    ),
                },
            });
        };
        if verify && !covered {
            verify_md5(&shown, &bytes)?;
        }
        ordered.push((shown, bytes));
    }
    // Checksums were handled above, per file or per archive.
    assemble(ordered.into_iter().map(Ok), false, TRAIN_FILES.len())
}

#[cfg(test)]
mod tests {
    use super::synthetic::{all_files, batch, label, tar_gz};
    use super::*;

    fn assert_synthetic(data: &Cifar10) {
        assert_eq!(data.train.len(), 5 * RECORDS_PER_FILE);
        assert_eq!(data.test.len(), RECORDS_PER_FILE);
        assert_eq!(data.train.images.len(), 5 * RECORDS_PER_FILE * IMAGE_BYTES);
        // Train batches must be concatenated in order 1..5.
        for (file, seed) in [(0, 0), (2, 2), (4, 4)] {
            let i = file * RECORDS_PER_FILE + 7;
            assert_eq!(data.train.labels[i], label(7, seed));
        }
        assert_eq!(data.test.labels[7], label(7, 5));
    }

    #[test]
    fn parse_batch_reads_labels_and_planar_images() {
        let mut bytes = batch(3, 0);
        // Mark the first byte of each plane of record 1 to check the copy.
        let base = RECORD_BYTES + 1;
        bytes[base] = 201;
        bytes[base + 1024] = 202;
        bytes[base + 2048] = 203;
        let split = parse_batch("x.bin", &bytes, false).unwrap();
        assert_eq!(split.len(), 3);
        assert_eq!(split.labels, vec![label(0, 0), label(1, 0), label(2, 0)]);
        assert_eq!(split.label(1), usize::from(label(1, 0)));
        let image = split.image(1);
        assert_eq!(image.len(), IMAGE_BYTES);
        assert_eq!((image[0], image[1024], image[2048]), (201, 202, 203));
        assert_eq!(image[1], label(1, 0) * 20);
        assert_eq!(image[IMAGE_BYTES - 1], label(1, 0) * 20 + 2);
    }

    #[test]
    fn parse_batch_strict_accepts_a_full_file() {
        let split = parse_batch("data_batch_1.bin", &batch(RECORDS_PER_FILE, 1), true).unwrap();
        assert_eq!(split.len(), RECORDS_PER_FILE);
    }

    #[test]
    fn parse_batch_rejects_partial_record() {
        let bytes = vec![0u8; 10 * RECORD_BYTES - 5];
        let err = parse_batch("data_batch_3.bin", &bytes, false).unwrap_err();
        assert!(matches!(err, DataError::BadSize { len, .. } if len == bytes.len()));
        assert_eq!(err.to_string(), "data_batch_3.bin: 30725 bytes is not a whole number of 3073-byte records");
    }

    #[test]
    fn parse_batch_strict_rejects_wrong_count() {
        let bytes = batch(RECORDS_PER_FILE - 1, 0);
        assert!(parse_batch("data_batch_3.bin", &bytes, false).is_ok());
        let err = parse_batch("data_batch_3.bin", &bytes, true).unwrap_err();
        assert_eq!(err.to_string(), "data_batch_3.bin: expected 10000 records (30730000 bytes), found 9999");
    }

    #[test]
    fn parse_batch_names_record_with_bad_label() {
        let mut bytes = batch(20, 0);
        bytes[17 * RECORD_BYTES] = 12;
        let err = parse_batch("test_batch.bin", &bytes, false).unwrap_err();
        assert!(matches!(err, DataError::BadLabel { record: 17, label: 12, .. }));
        assert_eq!(err.to_string(), "test_batch.bin: record 17 has label byte 12 (must be 0..=9)");
        bytes[17 * RECORD_BYTES] = 9;
        assert!(parse_batch("test_batch.bin", &bytes, false).is_ok());
    }

    #[test]
    fn md5_hex_matches_known_digests() {
        assert_eq!(md5_hex(b""), "d41d8cd98f00b204e9800998ecf8427e");
        assert_eq!(md5_hex(b"abc"), "900150983cd24fb0d6963f7d28e17f72");
    }

    #[test]
    fn official_md5_table() {
        assert_eq!(official_md5("data_batch_4.bin"), Some("ae636b3ba5c66a11e91e8cb52e771fcb"));
        assert_eq!(official_md5("some/dir/test_batch.bin"), Some("803d5f7f4d78ea53de84dbe85f74fb6d"));
        assert_eq!(official_md5(ARCHIVE_NAME), Some("c32a1d4ab5d03f1284b67883e8d87530"));
        assert_eq!(official_md5("batches.meta.txt"), None);
    }

    #[test]
    fn verify_md5_detects_mismatch() {
        let bytes = batch(2, 0);
        let err = verify_md5("data_batch_2.bin", &bytes).unwrap_err();
        let actual = md5_hex(&bytes);
        assert!(matches!(&err, DataError::Checksum { actual: a, .. } if *a == actual));
        assert_eq!(
            err.to_string(),
            format!(
                "data_batch_2.bin: MD5 checksum mismatch (expected 5ea93a67294ea407fff1d09f752e9692, \
                 got {actual}): the file is corrupt or not the official CIFAR-10 binary"
            )
        );
        assert!(verify_md5("unknown.bin", &bytes).is_ok());
    }

    #[test]
    fn from_files_checks_md5_only_when_asked() {
        let files = all_files();
        assert!(matches!(
            from_files(files.clone(), true),
            Err(DataError::Checksum { file, .. }) if file == "data_batch_1.bin"
        ));
        assert_synthetic(&from_files(files, false).unwrap());
    }

    #[test]
    fn from_files_loads_loose_bins_in_any_order_and_ignores_others() {
        let mut files = all_files();
        files.reverse();
        files.push(("batches.meta.txt".into(), b"airplane\n".to_vec()));
        assert_synthetic(&from_files(files, false).unwrap());
    }

    #[test]
    fn from_files_loads_tar_gz_by_content() {
        let mut entries = all_files();
        entries.insert(2, ("batches.meta.txt".into(), b"airplane\n".to_vec()));
        let archive = tar_gz(&entries);
        // Deliberately not named *.tar.gz: detection is by gzip magic.
        let data = from_files(vec![("download".into(), archive)], false).unwrap();
        assert_synthetic(&data);
    }

    #[test]
    fn from_files_verifies_official_archive_name() {
        let archive = tar_gz(&all_files());
        let err = from_files(vec![(ARCHIVE_NAME.into(), archive)], true).unwrap_err();
        assert!(matches!(err, DataError::Checksum { file, .. } if file == ARCHIVE_NAME));
    }

    #[test]
    fn corrupt_gzip_is_an_archive_error() {
        let mut archive = tar_gz(&all_files());
        archive.truncate(archive.len() / 2);
        let err = from_files(vec![(ARCHIVE_NAME.into(), archive)], false).unwrap_err();
        assert!(matches!(err, DataError::NotArchive { ref file, .. } if file == ARCHIVE_NAME), "{err}");
        assert!(err.to_string().starts_with("cifar-10-binary.tar.gz: not a gzip tar archive ("));

        let garbage = vec![0x1f, 0x8b, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9];
        let err = extract_archive(ARCHIVE_NAME, &garbage).unwrap_err();
        assert!(matches!(err, DataError::NotArchive { .. }), "{err}");
    }

    #[test]
    fn archive_missing_a_batch_names_it() {
        let mut entries = all_files();
        entries.remove(3);
        let archive = tar_gz(&entries);
        let err = from_files(vec![(ARCHIVE_NAME.into(), archive)], false).unwrap_err();
        assert_eq!(err.to_string(), "cifar-10-binary.tar.gz: missing data_batch_4.bin");
    }

    #[test]
    fn missing_file_is_named() {
        let mut files = all_files();
        files.remove(4);
        let err = from_files(files, false).unwrap_err();
        assert!(matches!(&err, DataError::Missing { file, .. } if file == "data_batch_5.bin"), "{err}");
        assert!(err.to_string().starts_with("data_batch_5.bin: file not found."));
    }

    #[test]
    fn split_helpers() {
        let split = parse_batch("x.bin", &batch(30, 0), false).unwrap();
        assert!(!split.is_empty());
        assert!(Split::default().is_empty());

        let sub = split.subset(&[5, 2, 5]);
        assert_eq!(sub.len(), 3);
        assert_eq!(sub.image(0), split.image(5));
        assert_eq!(sub.image(1), split.image(2));
        assert_eq!(sub.labels, vec![split.labels[5], split.labels[2], split.labels[5]]);

        let first = split.take(4);
        assert_eq!(first.labels, split.labels[..4]);
        assert_eq!(first.images, split.images[..4 * IMAGE_BYTES]);
        assert_eq!(split.take(1000).len(), 30);

        let mut joined = split.take(10);
        joined.append(split.subset(&(10..30).collect::<Vec<_>>()));
        assert_eq!(joined, split);
    }

    #[test]
    fn balanced_subset_keeps_first_per_class_in_file_order() {
        // Class 3 has only one image, fewer than asked for.
        let labels: Vec<u8> = vec![0, 1, 0, 2, 0, 1, 2, 0, 3];
        let split =
            Split { images: labels.iter().flat_map(|&l| vec![l + 100; IMAGE_BYTES]).collect(), labels: labels.clone() };
        let picked = split.balanced_subset(2);
        assert_eq!(picked.labels, vec![0, 1, 0, 2, 1, 2, 3]);
        assert_eq!(picked.image(6)[0], 103);
        assert!(split.balanced_subset(0).is_empty());
    }

    #[test]
    fn an_archive_entry_larger_than_a_batch_is_refused() {
        let archive = tar_gz(&[("data_batch_1.bin".into(), vec![0u8; MAX_BATCH_BYTES + 1])]);
        let e = extract_archive("a.tar.gz", &archive).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("a.tar.gz: data_batch_1.bin in it is larger than a CIFAR-10 batch ({MAX_BATCH_BYTES} bytes)")
        );
    }

    #[test]
    fn a_header_claiming_a_huge_entry_allocates_nothing_for_it() {
        // A tar header that says 2^62 bytes, with 10 behind it (this used to be the capacity
        // of the buffer the entry was read into: a panic).
        let mut header = tar::Header::new_gnu();
        header.set_path("cifar-10-batches-bin/test_batch.bin").unwrap();
        header.set_size(1 << 62);
        header.set_mode(0o644);
        header.set_cksum();
        let mut tar = header.as_bytes().to_vec();
        tar.extend_from_slice(&[7u8; 10]);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &tar).unwrap();
        let e = extract_archive("a.tar.gz", &gz.finish().unwrap()).unwrap_err();
        assert!(matches!(e, DataError::NotArchive { .. } | DataError::MissingInArchive { .. }), "{e}");
    }
}
