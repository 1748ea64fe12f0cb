//! Read, validate, split, batch and write IDX datasets (MNIST, Fashion-MNIST, EMNIST, KMNIST) in
//! pure Rust, without panicking on bad input.
//!
//! Every file is validated before it is trusted: magic number, element type (unsigned bytes),
//! number of dimensions, the dimensions against the real data length (a lying header allocates
//! nothing), image count against label count, and every label below the number of classes.
//! Gzip input is recognised by its magic bytes, not by the file name. Pixels stay `u8`; turning
//! them into floats (`value / 255`) is the trainer's job.
//!
//! # Example: load MNIST and iterate one epoch of shuffled batches
//!
//! ```no_run
//! use std::num::NonZeroUsize;
//! use std::path::Path;
//!
//! let mnist = mnist_io::load_dir(Path::new("data/mnist"))?;
//! assert_eq!(mnist.train.len(), 60_000);
//! let batch_size = NonZeroUsize::new(128).expect("non-zero");
//! let plan = mnist_io::BatchPlan::shuffled(mnist.train.len(), batch_size, 42, true);
//! for indices in plan.iter() {
//!     let batch = mnist.train.subset(indices)?;
//!     assert_eq!(batch.images().pixels().len(), 128 * 28 * 28);
//! }
//! # Ok::<(), mnist_io::Error>(())
//! ```

mod batch;
mod dataset;
mod error;
mod idx;

pub use batch::{BatchPlan, SplitMix64, shuffled_indices};
pub use dataset::{
    Dataset, Images, MNIST_CLASSES, MNIST_FILES, Splits, labels_to_idx_bytes, load_dir,
    parse_labels, read_labels, write_labels,
};
pub use error::{Error, Result};

#[cfg(test)]
mod tests;
