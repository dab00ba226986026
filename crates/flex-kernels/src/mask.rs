//! The dropout masks of the fused BatchNorm kernel.
//!
//! Burn's `nn::Dropout` draws every mask element from the backend RNG. On flex that is a
//! ChaCha draw and a float conversion per element on one thread: profiled at 80 ms of a 450 ms
//! training step (width 0.25, batch 128). Here the mask comes from a fast counter-based
//! generator (16 random bits per element, 4 per 64-bit draw), already scaled by 1/keep, and
//! is never stored: the kernel applies it plane by plane.
//!
//! The generator is process-wide, like the backend RNG; a trainer reseeds it at every step
//! ([`seed`]) so that a resumed run draws the same masks as an unbroken one.

use std::sync::atomic::{AtomicU64, Ordering};

static STATE: AtomicU64 = AtomicU64::new(0x853c_49e6_748f_ea9b);

/// Reseeds the mask generator (process-wide, as the backend RNG is).
pub fn seed(seed: u64) {
    STATE.store(seed, Ordering::SeqCst);
}

#[inline(always)]
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// One layer's dropout mask, drawn lazily: element `i` is dropped when 16 bits of
/// `SplitMix64(stream + i/4)` fall under `prob · 2¹⁶`, so any slice of the mask can be built
/// on its own (the fused CPU kernels apply it plane by plane, in parallel).
#[derive(Clone, Copy, Debug)]
pub struct Mask {
    stream: u64,
    threshold: u64,
    /// What kept elements are multiplied by: `1 / (1 - prob)`.
    pub keep: f32,
}

impl Mask {
    /// The next layer's mask: each call consumes one stream position, so masks of successive
    /// layers differ and the sequence only depends on the seed.
    pub fn draw(prob: f64) -> Mask {
        let stream = mix(STATE.fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::SeqCst));
        Mask { stream, threshold: (prob * 65536.0).round() as u64, keep: (1.0 / (1.0 - prob)) as f32 }
    }

    /// Multiplies `values`, elements `start..start + values.len()` of the masked tensor, by
    /// the mask. Whole groups of four (one hash each) in the middle, with no branch and no
    /// state carried between groups, so that the loop vectorises.
    #[inline(always)]
    pub fn apply(&self, start: usize, values: &mut [f32]) {
        let head = ((4 - start % 4) % 4).min(values.len());
        let (head_values, rest) = values.split_at_mut(head);
        for (k, v) in head_values.iter_mut().enumerate() {
            *v = self.one(start + k, *v);
        }
        let first_group = (start + head) / 4;
        let tail_start = start + head + rest.len() / 4 * 4;
        let mut groups = rest.chunks_exact_mut(4);
        for (g, quad) in (&mut groups).enumerate() {
            let bits = mix(self.stream.wrapping_add((first_group + g) as u64));
            for (l, v) in quad.iter_mut().enumerate() {
                *v = self.masked((bits >> (16 * l)) & 0xffff, *v);
            }
        }
        for (k, v) in groups.into_remainder().iter_mut().enumerate() {
            *v = self.one(tail_start + k, *v);
        }
    }

    /// Element `i` on its own.
    #[inline(always)]
    fn one(&self, i: usize, v: f32) -> f32 {
        self.masked((mix(self.stream.wrapping_add((i / 4) as u64)) >> (16 * (i % 4))) & 0xffff, v)
    }

    /// `v · keep`, or 0 when the element's 16 bits fall under the threshold: a bit mask, not a
    /// branch.
    #[inline(always)]
    fn masked(&self, bits: u64, v: f32) -> f32 {
        let kept = (bits >= self.threshold) as u32;
        f32::from_bits((v * self.keep).to_bits() & kept.wrapping_neg())
    }
}

/// `n` mask values: 0 with probability `prob`, else `1 / (1 - prob)`.
pub fn host_mask(n: usize, prob: f64) -> Vec<f32> {
    let mut out = vec![1.0f32; n];
    Mask::draw(prob).apply(0, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_mask_drops_the_right_fraction_and_scales() {
        seed(7);
        let m = host_mask(200_003, 0.05);
        assert_eq!(m.len(), 200_003);
        let dropped = m.iter().filter(|v| **v == 0.0).count() as f64 / m.len() as f64;
        assert!((dropped - 0.05).abs() < 0.003, "dropped {dropped}");
        let keep = 1.0 / 0.95f32;
        assert!(m.iter().all(|v| *v == 0.0 || *v == keep));
        // Reseeding replays; the next call draws a different mask.
        seed(7);
        assert_eq!(host_mask(200_003, 0.05), m);
        assert_ne!(host_mask(200_003, 0.05), m);
    }

    #[test]
    fn any_slice_of_a_mask_is_the_same_as_in_the_whole() {
        seed(9);
        let mask = Mask::draw(0.3);
        let mut whole = vec![1.0f32; 1001];
        mask.apply(0, &mut whole);
        for (start, len) in [(0, 3), (1, 7), (5, 400), (998, 3), (4, 4), (3, 0), (2, 1)] {
            let mut part = vec![1.0f32; len];
            mask.apply(start, &mut part);
            assert_eq!(part, whole[start..start + len], "slice {start}+{len}");
        }
        // The definition, element by element (what the mask must stay: resumed runs replay it).
        for (i, v) in whole.iter().enumerate() {
            let bits = (mix(mask.stream.wrapping_add((i / 4) as u64)) >> (16 * (i % 4))) & 0xffff;
            let want = if bits < mask.threshold { 0.0 } else { mask.keep };
            assert_eq!(*v, want, "element {i}");
        }
    }
}
