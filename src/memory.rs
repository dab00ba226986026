//! The native global allocator: the system allocator plus a small cache of large blocks, and
//! live/peak byte counters for `bench`.
//!
//! Why: on the CPU backend every training step allocates the same few hundred activation and
//! gradient buffers (up to hundreds of MB each at width 1, batch 512) and frees them again.
//! glibc hands blocks that large straight back to the kernel, so the next step page-faults
//! them in again and the kernel zeroes every page: profiled at ~17% of a flex training step.
//! Keeping freed large blocks by exact size and handing them back on the next request of that
//! size removes the faults, because a training loop asks for the same sizes every step.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Blocks from this size up are cached; smaller ones are glibc's fast path anyway.
const MIN_CACHED: usize = 256 * 1024;
/// Blocks from `MIN_CACHED` up start on a cache line: the AMX kernels (`flex-kernels`) store
/// a convolution's output straight into its tensor a tile row (64 bytes) at a time, and a row
/// straddling two lines slows the tile unit by 15–20 %. glibc aligns them to 16 bytes only.
const LARGE_ALIGN: usize = 64;
/// Cached (free) bytes kept at most; past it, freed blocks go back to the system.
const CACHE_LIMIT: usize = 3 << 30;
/// Distinct block sizes remembered, and free blocks kept per size.
const BINS: usize = 96;
const PER_BIN: usize = 12;

#[derive(Clone, Copy)]
struct Bin {
    size: usize,
    align: usize,
    count: usize,
    blocks: [usize; PER_BIN],
}

const EMPTY: Bin = Bin { size: 0, align: 0, count: 0, blocks: [0; PER_BIN] };

/// Fixed-size storage: the cache must never allocate while it holds its lock.
struct Cache {
    bins: [Bin; BINS],
    bytes: usize,
    /// Round-robin victim when every bin is in use by another size.
    next_victim: usize,
}

static CACHE: Mutex<Cache> = Mutex::new(Cache { bins: [EMPTY; BINS], bytes: 0, next_victim: 0 });
static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

pub struct CachingAllocator;

impl CachingAllocator {
    fn take(layout: Layout) -> Option<*mut u8> {
        let mut cache = CACHE.lock().ok()?;
        let cache = &mut *cache;
        let bin =
            cache.bins.iter_mut().find(|b| b.size == layout.size() && b.align == layout.align() && b.count > 0)?;
        bin.count -= 1;
        let ptr = bin.blocks[bin.count];
        cache.bytes -= layout.size();
        Some(ptr as *mut u8)
    }

    /// Keeps a freed block; false when the cache is full (the caller frees it).
    fn keep(ptr: *mut u8, layout: Layout) -> bool {
        let Ok(mut cache) = CACHE.lock() else { return false };
        let cache = &mut *cache;
        if cache.bytes + layout.size() > CACHE_LIMIT {
            return false;
        }
        let (size, align) = (layout.size(), layout.align());
        let index = match cache.bins.iter().position(|b| b.size == size && b.align == align) {
            Some(i) => i,
            None => match cache.bins.iter().position(|b| b.count == 0) {
                Some(i) => i,
                None => {
                    // Every bin holds blocks of another size: release one bin's blocks.
                    let i = cache.next_victim % BINS;
                    cache.next_victim += 1;
                    let victim = cache.bins[i];
                    for &p in &victim.blocks[..victim.count] {
                        // SAFETY: cached blocks came from System with this size and align.
                        unsafe {
                            System.dealloc(p as *mut u8, Layout::from_size_align_unchecked(victim.size, victim.align))
                        };
                    }
                    cache.bytes -= victim.size * victim.count;
                    cache.bins[i].count = 0;
                    i
                }
            },
        };
        let bin = &mut cache.bins[index];
        if bin.count == PER_BIN {
            return false;
        }
        bin.size = size;
        bin.align = align;
        bin.blocks[bin.count] = ptr as usize;
        bin.count += 1;
        cache.bytes += size;
        true
    }

    fn track_alloc(size: usize) {
        let live = LIVE.fetch_add(size, Ordering::Relaxed) + size;
        PEAK.fetch_max(live, Ordering::Relaxed);
    }
}

/// The layout a block is really allocated with: large ones aligned to `LARGE_ALIGN`. The same
/// for a block's allocation and its release, since both see the caller's layout.
fn actual(layout: Layout) -> Layout {
    if layout.size() >= MIN_CACHED && layout.align() < LARGE_ALIGN {
        Layout::from_size_align(layout.size(), LARGE_ALIGN).unwrap_or(layout)
    } else {
        layout
    }
}

// SAFETY: every block handed out comes from `System` with the same (actual) layout it is
// returned with; cached blocks are only reused for identical (size, align).
unsafe impl GlobalAlloc for CachingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let layout = actual(layout);
        Self::track_alloc(layout.size());
        if layout.size() >= MIN_CACHED
            && let Some(p) = Self::take(layout)
        {
            return p;
        }
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let layout = actual(layout);
        Self::track_alloc(layout.size());
        if layout.size() >= MIN_CACHED
            && let Some(p) = Self::take(layout)
        {
            unsafe { p.write_bytes(0, layout.size()) };
            return p;
        }
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let layout = actual(layout);
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        if layout.size() >= MIN_CACHED && Self::keep(ptr, layout) {
            return;
        }
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if layout.size() < MIN_CACHED && new_size < MIN_CACHED {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            Self::track_alloc(new_size);
            return unsafe { System.realloc(ptr, layout, new_size) };
        }
        // SAFETY: as GlobalAlloc's default realloc.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        let new = unsafe { self.alloc(new_layout) };
        if !new.is_null() {
            unsafe {
                std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
        }
        new
    }
}

/// Heap bytes in use now (CPU-backend tensors live here).
pub fn live_bytes() -> usize {
    LIVE.load(Ordering::Relaxed)
}

/// The most heap bytes in use at once since the last [`reset_peak`].
pub fn peak_bytes() -> usize {
    PEAK.load(Ordering::Relaxed)
}

pub fn reset_peak() {
    PEAK.store(LIVE.load(Ordering::Relaxed), Ordering::Relaxed);
}

/// The lib's own unit tests measure through the allocator the binary installs.
#[cfg(test)]
#[global_allocator]
static TEST_ALLOCATOR: CachingAllocator = CachingAllocator;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reuses_freed_large_blocks_zeroes_on_request_and_tracks_peak() {
        // An odd size no other test allocates.
        let n = (8 << 20) + 12_345;
        reset_peak();
        let base = peak_bytes();
        let a = vec![2u8; n];
        assert!(peak_bytes() >= base + n);
        let first = a.as_ptr();
        drop(a);
        let b = vec![0u8; n];
        assert_eq!(b.as_ptr(), first, "a block of the same size comes back from the cache");
        assert_eq!(b.as_ptr().addr() % LARGE_ALIGN, 0, "a large block starts on a cache line");
        assert!(b.iter().all(|&v| v == 0), "a zeroed allocation from the cache is zeroed");
        let c = vec![1u8; 1000];
        assert!(live_bytes() >= n + 1000);
        drop((b, c));
    }
}
