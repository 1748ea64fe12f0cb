//! Deterministic batching: seeded shuffles and in-order batches of example indices.
//!
//! The shuffle is a Fisher–Yates pass driven by SplitMix64 (Steele, Lea and Flood, 2014) seeded
//! with the caller's `u64`. Position `i` (from the end) swaps with `(r * (i + 1)) >> 64` where `r`
//! is the next 64-bit output: integer arithmetic only, so the same seed gives the same order on
//! every machine and every version of this crate.

use std::num::NonZeroUsize;

/// SplitMix64: a tiny, well-mixed 64-bit generator with a fixed, documented sequence.
#[derive(Clone, Debug)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        SplitMix64 { state: seed }
    }

    /// The next 64-bit output.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A value in `0..bound` (`bound > 0`), by multiply-shift.
    fn below(&mut self, bound: usize) -> usize {
        ((u128::from(self.next_u64()) * bound as u128) >> 64) as usize
    }
}

/// The indices `0..len` in an order shuffled by `seed`.
pub fn shuffled_indices(len: usize, seed: u64) -> Vec<usize> {
    let mut rng = SplitMix64::new(seed);
    let mut order: Vec<usize> = (0..len).collect();
    for i in (1..len).rev() {
        order.swap(i, rng.below(i + 1));
    }
    order
}

/// A plan of batches over example indices: shuffled by a seed for training, or in order for
/// evaluation.
#[derive(Clone, Debug)]
pub struct BatchPlan {
    order: Vec<usize>,
    batch_size: NonZeroUsize,
    drop_last: bool,
}

impl BatchPlan {
    /// Batches over `0..len` shuffled by `seed`; with `drop_last`, a final short batch is left
    /// out (as the seed's training loop does).
    pub fn shuffled(len: usize, batch_size: NonZeroUsize, seed: u64, drop_last: bool) -> Self {
        BatchPlan { order: shuffled_indices(len, seed), batch_size, drop_last }
    }

    /// Batches over `0..len` in order, the last one possibly short.
    pub fn in_order(len: usize, batch_size: NonZeroUsize) -> Self {
        BatchPlan { order: (0..len).collect(), batch_size, drop_last: false }
    }

    /// The number of batches.
    pub fn len(&self) -> usize {
        let size = self.batch_size.get();
        if self.drop_last { self.order.len() / size } else { self.order.len().div_ceil(size) }
    }

    /// Whether there are no batches.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The number of examples the batches cover.
    pub fn examples(&self) -> usize {
        self.order.len().min(self.len() * self.batch_size.get())
    }

    /// The batches, each a slice of example indices.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = &[usize]> + '_ {
        self.order.chunks(self.batch_size.get()).take(self.len())
    }
}
