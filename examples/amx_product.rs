//! One thread's bf16 tile products (`amx::product`) at the GEMM shapes of a width-1 training
//! step, batch 512, operands packed beforehand: GFLOP/s of the fastest of `reps` calls.
//! The fastest call, not the mean, so that a run beside another process (a training run on
//! the other core, a time slice lost) still measures the kernel:
//!
//! ```sh
//! cargo run --release --example amx_product [-- reps]
//! ```

use std::time::Instant;

use flex_kernels::amx;

/// (what, m, n, k) with bf16's blocks of at least 512 columns (`conv.rs`, `Plan::Rows`): the
/// forwards and input gradients of the maps 16 and 32 wide are one product per image and
/// kernel row (`o × hw × 3c`), those of the 4- and 8-wide maps one per block of 25 and 7
/// images (`o × 496 × 3c`); the weight gradients `3c × o × (columns + lead)`.
const SHAPES: [(&str, usize, usize, usize); 9] = [
    ("64→128 32×32 forward", 128, 1024, 192),
    ("64→128 32×32 input grad", 64, 1024, 384),
    ("64→128 32×32 weight grad", 192, 128, 1088),
    ("128→128 16×16 forward", 128, 256, 384),
    ("128→128 16×16 weight grad", 384, 128, 288),
    ("256→512 8×8 forward", 512, 496, 768),
    ("256→512 8×8 weight grad", 768, 512, 512),
    ("512→512 4×4 forward", 512, 496, 1536),
    ("512→512 4×4 weight grad", 1536, 512, 504),
];

fn main() {
    if !amx::available() {
        eprintln!("this CPU has no AMX-BF16: nothing to measure");
        return;
    }
    let reps: usize = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(200);
    let value = |i: usize| ((i * 7919) % 2003) as f32 / 1000.0 - 1.0;
    let (mut total_flops, mut total_secs) = (0.0, 0.0);
    for (what, m, n, k) in SHAPES {
        let a: Vec<f32> = (0..m * k).map(value).collect();
        let b: Vec<f32> = (0..k * n).map(|i| value(i + 11)).collect();
        let (mut left, mut right) = (amx::Left::default(), amx::Right::default());
        left.pack(&a, k, m, k);
        right.pack(&b, n, k, n);
        // As `conv.rs` keeps its outputs: rows padded to 16 floats, 64-byte aligned.
        let dst_rs = n.next_multiple_of(16);
        let mut store = vec![0.0f32; m * dst_rs + 16];
        let start = store.as_ptr().align_offset(64).min(16);
        let dst = &mut store[start..][..m * dst_rs];
        let mut best = f64::INFINITY;
        for _ in 0..reps {
            let t = Instant::now();
            amx::product(&left, 0, &right, [0, 0], [m, n, k], dst, dst_rs, false);
            best = best.min(t.elapsed().as_secs_f64());
        }
        let flops = 2.0 * (m * n * k) as f64;
        total_flops += flops;
        total_secs += best;
        println!("{what:<28} {m:>5} × {n:>5} × {k:>5}  {:>8.1} µs  {:>7.1} GFLOP/s", best * 1e6, flops / best / 1e9);
    }
    println!(
        "{:<28} {:>23}  {:>8.1} µs  {:>7.1} GFLOP/s",
        "all (sum of the fastest)",
        "",
        total_secs * 1e6,
        total_flops / total_secs / 1e9
    );
}
