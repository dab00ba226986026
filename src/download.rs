//! Native data loading: finds the CIFAR-10 batch files on disk, falls back to
//! the official archive, and downloads it when allowed.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

use cifar_core::data::*;

pub const ARCHIVE_URL: &str = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz";
const DATA_DIR_ENV: &str = "CIFAR10_DIR";
const DEFAULT_DATA_DIR: &str = "./data/cifar-10-batches-bin";

/// The data directory: the CLI value, else `$CIFAR10_DIR`, else
/// `./data/cifar-10-batches-bin`.
pub fn resolve_data_dir(cli: Option<PathBuf>) -> PathBuf {
    cli.or_else(|| std::env::var_os(DATA_DIR_ENV).filter(|v| !v.is_empty()).map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR))
}

/// Loads CIFAR-10 from `dir`, which should hold the six `.bin` files: the test batch and the
/// training batches that hold the first `train_images` images (0: all five), so that a run
/// limited to the first 10,000 needs only `data_batch_1.bin` and `test_batch.bin`.
///
/// Falls back to `cifar-10-binary.tar.gz` in `dir` or its parent, then (with
/// `allow_download`) to downloading that archive into the parent and
/// extracting it into `dir`. With `verify`, files are checked against the
/// official MD5s; a download is always checked.
pub fn load(dir: &Path, allow_download: bool, verify: bool, train_images: usize) -> Result<Cifar10, DataError> {
    if dir.exists() && !dir.is_dir() {
        return Err(DataError::Io {
            file: shown(dir),
            problem: "not a directory: the data directory is the folder that holds the six .bin files".into(),
        });
    }
    let train_files = train_files_for(train_images);
    let needed = TRAIN_FILES[..train_files].iter().chain([&TEST_FILE]);
    let paths: Vec<PathBuf> = needed.map(|name| dir.join(name)).collect();
    let Some(first_missing) = paths.iter().find(|path| !path.is_file()) else {
        let files = paths.iter().map(|path| fs::read(path).map(|bytes| (shown(path), bytes)).map_err(io_err(path)));
        return assemble(files, verify, train_files);
    };

    let parent = parent_dir(dir);
    let local_archive = [dir.join(ARCHIVE_NAME), parent.join(ARCHIVE_NAME)].into_iter().find(|path| path.is_file());
    if let Some(archive) = local_archive {
        let bytes = fs::read(&archive).map_err(io_err(&archive))?;
        if verify {
            verify_md5(&shown(&archive), &bytes)?;
        }
        return load_archive(&archive, &bytes);
    }

    if allow_download {
        let (archive, bytes) = download_archive(&parent)?;
        let entries = extract_archive(&shown(&archive), &bytes)?;
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        for (name, data) in &entries {
            let path = dir.join(name);
            write_atomic(&path, data).map_err(io_err(&path))?;
        }
        eprintln!("Extracted the CIFAR-10 batch files into {}", dir.display());
        let files = entries.into_iter().map(|(name, bytes)| Ok((shown(&dir.join(name)), bytes)));
        // The archive's MD5 was checked during the download.
        return assemble(files, false, TRAIN_FILES.len());
    }

    Err(DataError::Missing {
        file: shown(first_missing),
        hint: format!(
            "Put the six CIFAR-10 binary files ({}) in {}, point --data-dir or the \
             {DATA_DIR_ENV} environment variable at the folder that holds them, or run \
             without --no-download to fetch the official archive (about 170 MB) from {ARCHIVE_URL}",
            ALL_FILES.join(", "),
            dir.display()
        ),
    })
}

/// Writes `bytes` to `path` via a temporary file in the same directory, so a
/// crash or a full disk never leaves a half-written file under the final name.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let file_name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, format!("{}: not a file path", path.display())))?;
    let mut tmp_name = file_name.to_os_string();
    tmp_name.push(format!(".tmp-{}", std::process::id()));
    let tmp = path.with_file_name(tmp_name);

    let result = (|| {
        let mut file = File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// The caller has already checked the archive's MD5 when asked to.
fn load_archive(archive: &Path, bytes: &[u8]) -> Result<Cifar10, DataError> {
    let entries = extract_archive(&shown(archive), bytes)?;
    let files = entries.into_iter().map(|(name, bytes)| Ok((format!("{} ({name})", archive.display()), bytes)));
    assemble(files, false, TRAIN_FILES.len())
}

/// Downloads the archive into `dest_dir`, returning its final path and bytes.
/// The bytes go to a `.part` file that is renamed only once the MD5 matches,
/// so an interrupted or corrupt download is never mistaken for the archive.
fn download_archive(dest_dir: &Path) -> Result<(PathBuf, Vec<u8>), DataError> {
    // Folders this download creates are removed again if it fails.
    let mut created = Vec::new();
    let mut missing = Some(dest_dir);
    while let Some(d) = missing.filter(|d| !d.as_os_str().is_empty() && !d.exists()) {
        created.push(d.to_path_buf());
        missing = d.parent();
    }
    fs::create_dir_all(dest_dir).map_err(io_err(dest_dir))?;
    let archive = dest_dir.join(ARCHIVE_NAME);
    let part = dest_dir.join(format!("{ARCHIVE_NAME}.part"));
    eprintln!("Downloading {ARCHIVE_URL} to {}", archive.display());

    let fetched = fetch(ARCHIVE_URL, &part).and_then(|bytes| {
        // The URL's last component is the archive name, so this finds its MD5.
        verify_md5(ARCHIVE_URL, &bytes)?;
        fs::rename(&part, &archive).map_err(io_err(&archive))?;
        Ok(bytes)
    });
    match fetched {
        Ok(bytes) => Ok((archive, bytes)),
        Err(err) => {
            let _ = fs::remove_file(&part);
            for d in &created {
                let _ = fs::remove_dir(d);
            }
            Err(err)
        }
    }
}

/// Streams the archive into `part` and memory at once, so it is neither
/// re-read from disk nor held twice.
fn fetch(url: &str, part: &Path) -> Result<Vec<u8>, DataError> {
    let network =
        |e: &dyn std::fmt::Display| DataError::Io { file: url.to_owned(), problem: format!("download failed: {e}") };
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_connect(Some(Duration::from_secs(30)))
        .timeout_per_read(Some(Duration::from_secs(60)))
        .build()
        .into();
    let response = agent
        .get(url)
        // ureq transparently gunzips `Content-Encoding: gzip` bodies, which
        // would hand us the tar instead of the checksummed .tar.gz.
        .header("Accept-Encoding", "identity")
        .call()
        .map_err(|e| network(&e))?;
    let body = response.into_body();
    let len = body.content_length();

    let bar = match len {
        Some(len) => ProgressBar::new(len),
        None => ProgressBar::no_length(),
    };
    bar.set_style(
        ProgressStyle::with_template("{bar:40.cyan/blue} {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}")
            .expect("valid progress template")
            .progress_chars("=> "),
    );

    let mut reader = body.into_reader();
    let mut file = File::create(part).map_err(io_err(part))?;
    let mut bytes = Vec::with_capacity(len.map_or(0, |len| len.min(1 << 30) as usize));
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                bar.abandon();
                return Err(network(&e));
            }
        };
        file.write_all(&buf[..n]).map_err(io_err(part))?;
        bytes.extend_from_slice(&buf[..n]);
        bar.inc(n as u64);
    }
    file.sync_all().map_err(io_err(part))?;
    bar.finish();
    Ok(bytes)
}

/// The directory holding `dir`, without touching the file system: `dir` may
/// not exist yet, so `dir/..` cannot be resolved.
fn parent_dir(dir: &Path) -> PathBuf {
    match dir.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn shown(path: &Path) -> String {
    path.display().to_string()
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> DataError + '_ {
    move |e| DataError::Io { file: shown(path), problem: e.to_string() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cifar_core::data::synthetic::{all_files, label, tar_gz};

    /// A fresh directory under the system temp dir, removed on drop. The data
    /// dir is nested one level down so the archive lookup in its parent only
    /// ever sees files this test created.
    struct Scratch {
        root: PathBuf,
    }

    impl Scratch {
        fn new(tag: &str) -> Self {
            let root = std::env::temp_dir().join(format!("cifar_webgpu_{tag}_{}", std::process::id()));
            let _ = fs::remove_dir_all(&root);
            fs::create_dir_all(root.join("cifar-10-batches-bin")).unwrap();
            Scratch { root }
        }

        fn data_dir(&self) -> PathBuf {
            self.root.join("cifar-10-batches-bin")
        }

        fn write_batches(&self, skip: &[&str]) {
            for (name, bytes) in all_files() {
                if !skip.contains(&name.as_str()) {
                    fs::write(self.data_dir().join(&name), bytes).unwrap();
                }
            }
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.root);
        }
    }

    fn assert_synthetic(data: &Cifar10) {
        assert_eq!(data.train.len(), 5 * RECORDS_PER_FILE);
        assert_eq!(data.test.len(), RECORDS_PER_FILE);
        assert_eq!(data.train.labels[RECORDS_PER_FILE + 1], label(1, 1));
        assert_eq!(data.test.labels[1], label(1, 5));
    }

    #[test]
    fn resolve_data_dir_prefers_cli() {
        let cli = PathBuf::from("/some/where");
        assert_eq!(resolve_data_dir(Some(cli.clone())), cli);
    }

    #[test]
    fn load_reads_synthetic_dir_without_verify() {
        let scratch = Scratch::new("load_ok");
        scratch.write_batches(&[]);
        let dir = scratch.data_dir();
        assert_synthetic(&load(&dir, false, false, 0).unwrap());

        // The synthetic files are not the official ones, so verification must
        // reject them, naming the full path.
        let err = load(&dir, false, true, 0).unwrap_err();
        let expected = shown(&dir.join("data_batch_1.bin"));
        assert!(matches!(&err, DataError::Checksum { file, .. } if *file == expected), "{err}");
    }

    #[test]
    fn load_names_first_missing_file() {
        let scratch = Scratch::new("load_missing");
        scratch.write_batches(&["data_batch_2.bin", TEST_FILE]);
        let dir = scratch.data_dir();
        let err = load(&dir, false, false, 0).unwrap_err();
        let expected = shown(&dir.join("data_batch_2.bin"));
        assert!(matches!(&err, DataError::Missing { file, .. } if *file == expected), "{err}");
        let message = err.to_string();
        for needle in ["--data-dir", "CIFAR10_DIR", "without --no-download"] {
            assert!(message.contains(needle), "{message}");
        }
    }

    #[test]
    fn load_reads_only_the_files_a_train_limit_needs() {
        let scratch = Scratch::new("load_limited");
        scratch.write_batches(&["data_batch_2.bin", "data_batch_3.bin", "data_batch_4.bin", "data_batch_5.bin"]);
        let dir = scratch.data_dir();
        for images in [1, 10_000] {
            let data = load(&dir, false, false, images).unwrap();
            assert_eq!((data.train.len(), data.test.len()), (10_000, 10_000), "{images}");
            assert_eq!(data.train.labels[1], label(1, 0));
            assert_eq!(data.test.labels[1], label(1, 5));
        }
        for images in [0, 10_001, 50_000] {
            let err = load(&dir, false, false, images).unwrap_err();
            let expected = shown(&dir.join("data_batch_2.bin"));
            assert!(matches!(&err, DataError::Missing { file, .. } if *file == expected), "{images}: {err}");
        }
        assert_eq!([0, 1, 10_000, 10_001, 49_999, 50_000, 60_000].map(train_files_for), [5, 1, 1, 2, 5, 5, 5]);
    }

    #[test]
    fn load_names_path_of_truncated_file() {
        let scratch = Scratch::new("load_truncated");
        scratch.write_batches(&[]);
        let path = scratch.data_dir().join("data_batch_3.bin");
        let bytes = fs::read(&path).unwrap();
        fs::write(&path, &bytes[..bytes.len() - 100]).unwrap();
        let err = load(&scratch.data_dir(), false, false, 0).unwrap_err();
        assert!(matches!(&err, DataError::BadSize { file, .. } if *file == shown(&path)), "{err}");
        assert!(err.to_string().starts_with(&shown(&path)));
    }

    #[test]
    fn load_falls_back_to_archive_in_parent() {
        let scratch = Scratch::new("load_archive");
        fs::write(scratch.root.join(ARCHIVE_NAME), tar_gz(&all_files())).unwrap();
        assert_synthetic(&load(&scratch.data_dir(), false, false, 0).unwrap());
        // Not the official archive: verification must catch it.
        let err = load(&scratch.data_dir(), false, true, 0).unwrap_err();
        assert!(matches!(err, DataError::Checksum { .. }), "{err}");
    }

    #[test]
    fn write_atomic_replaces_content_and_leaves_no_temp() {
        let scratch = Scratch::new("write_atomic");
        let path = scratch.root.join("out.json");
        write_atomic(&path, b"first").unwrap();
        write_atomic(&path, b"second").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"second");
        let names: Vec<_> = fs::read_dir(&scratch.root).unwrap().map(|entry| entry.unwrap().file_name()).collect();
        assert_eq!(names.len(), 2, "{names:?}"); // out.json and the data dir
        assert!(names.iter().all(|n| !n.to_string_lossy().contains(".tmp-")), "{names:?}");
    }

    #[test]
    fn fetch_streams_body_to_part_file() {
        use std::net::TcpListener;

        let body: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/cifar-10-binary.tar.gz", listener.local_addr().unwrap());
        let served = body.clone();
        let server = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut request = Vec::new();
            let mut byte = [0u8; 1];
            while !request.ends_with(b"\r\n\r\n") {
                stream.read_exact(&mut byte).unwrap();
                request.push(byte[0]);
            }
            let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", served.len());
            stream.write_all(head.as_bytes()).unwrap();
            stream.write_all(&served).unwrap();
            String::from_utf8_lossy(&request).to_ascii_lowercase()
        });

        let scratch = Scratch::new("fetch");
        let part = scratch.root.join("archive.part");
        let fetched = fetch(&url, &part).unwrap();
        let request = server.join().unwrap();
        assert_eq!(fetched, body);
        assert_eq!(fs::read(&part).unwrap(), body);
        assert!(request.contains("accept-encoding: identity"), "{request}");
    }

    /// Loads the real dataset from `$CIFAR10_DIR` with MD5 verification.
    /// CI sets the variable (and `REQUIRE_REAL_DATA`, under which a missing one fails);
    /// elsewhere the test is skipped with a note.
    #[test]
    fn real_cifar10_loads_and_verifies() {
        let Some(dir) = std::env::var_os(DATA_DIR_ENV).filter(|v| !v.is_empty()) else {
            assert!(
                std::env::var_os("REQUIRE_REAL_DATA").is_none(),
                "real_cifar10_loads_and_verifies: REQUIRE_REAL_DATA is set but {DATA_DIR_ENV} is not"
            );
            eprintln!("SKIPPED real_cifar10_loads_and_verifies: {DATA_DIR_ENV} is not set");
            return;
        };
        let data = load(Path::new(&dir), false, true, 0).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(data.train.len(), 50_000);
        assert_eq!(data.test.len(), 10_000);
        assert_eq!(data.train.images.len(), 50_000 * IMAGE_BYTES);
        assert_eq!(data.test.images.len(), 10_000 * IMAGE_BYTES);
        for (split, per_class) in [(&data.train, 5_000), (&data.test, 1_000)] {
            let mut counts = [0usize; CLASSES.len()];
            for &label in &split.labels {
                counts[usize::from(label)] += 1;
            }
            assert_eq!(counts, [per_class; CLASSES.len()]);
        }
    }
}
