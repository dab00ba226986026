//! Host↔device traffic of the training and evaluation paths, counted: every upload and
//! read-back the core makes is recorded here, so that `bench` reports them per step (a GPU
//! pays a round trip for each). Counting is two relaxed atomic adds.

use std::sync::atomic::{AtomicU64, Ordering};

static UPLOADS: AtomicU64 = AtomicU64::new(0);
static UPLOAD_BYTES: AtomicU64 = AtomicU64::new(0);
static READBACKS: AtomicU64 = AtomicU64::new(0);
static READBACK_BYTES: AtomicU64 = AtomicU64::new(0);

/// Counts since the process started; subtract two snapshots for an interval.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Traffic {
    pub uploads: u64,
    pub upload_bytes: u64,
    pub readbacks: u64,
    pub readback_bytes: u64,
}

impl std::ops::Sub for Traffic {
    type Output = Traffic;
    fn sub(self, o: Traffic) -> Traffic {
        Traffic {
            uploads: self.uploads - o.uploads,
            upload_bytes: self.upload_bytes - o.upload_bytes,
            readbacks: self.readbacks - o.readbacks,
            readback_bytes: self.readback_bytes - o.readback_bytes,
        }
    }
}

pub fn snapshot() -> Traffic {
    Traffic {
        uploads: UPLOADS.load(Ordering::Relaxed),
        upload_bytes: UPLOAD_BYTES.load(Ordering::Relaxed),
        readbacks: READBACKS.load(Ordering::Relaxed),
        readback_bytes: READBACK_BYTES.load(Ordering::Relaxed),
    }
}

/// One host → device copy of `bytes`.
pub fn uploaded(bytes: usize) {
    UPLOADS.fetch_add(1, Ordering::Relaxed);
    UPLOAD_BYTES.fetch_add(bytes as u64, Ordering::Relaxed);
}

/// One device → host copy of `bytes`.
pub fn read_back(bytes: usize) {
    READBACKS.fetch_add(1, Ordering::Relaxed);
    READBACK_BYTES.fetch_add(bytes as u64, Ordering::Relaxed);
}
