//! Train only the last layers of a network over a frozen base, and prove the base stayed frozen.
//!
//! - [`pretrain`] trains a whole base (the usual way to get a useful one before freezing it).
//! - [`refine`] trains a [`RefineHead`](models::RefineHead) (and optionally the base stages from
//!   a split point on) while everything below the split is frozen: `freeze()`d, run without
//!   gradients in eval mode, never given to the optimizer, fingerprinted before and after.
//! - The frozen part runs once and its outputs are cached ([`FeatureCache`]); training then runs
//!   over the cached features. `FeatureCache::Off` recomputes them per batch, as the seed did.
//! - [`Optimizer`] is built from an explicit list of tensors, so state exists only for trainable
//!   ones; with a state folder, every finished epoch is saved and a killed run resumes bit for
//!   bit.
//! - Checkpoints are safetensors, written atomically and loaded strictly; a head records the
//!   fingerprint of the base it was trained on.
//!
//! Progress leaves through an [`Event`] callback: this crate has no UI dependency. Any base that
//! implements [`StagedBase`](models::StagedBase) works, not only [`BaseCnn`](models::BaseCnn).

mod checkpoint;
mod cpu_head;
mod error;
mod features;
mod fingerprint;
mod fit;
mod freeze;
mod jobs;
mod model_files;
mod optim;
mod state;
mod tensors;

pub use checkpoint::{Checkpoint, load as load_checkpoint};
pub use error::{Error, Result};
pub use features::{FeatureCache, Precision, extract};
pub use fingerprint::{Fingerprints, dataset_hex, tensor_hex};
pub use fit::{EpochMetrics, Evaluation, Event, FitConfig};
pub use freeze::{FreezePlan, TensorRole, split_index};
pub use jobs::{
    PretrainReport, RefineConfig, RefineReport, evaluate_base, evaluate_head, predict, pretrain,
    refine,
};
pub use model_files::{HeadBinding, load_base, load_head, save_base, save_head, store_fingerprint};
pub use optim::{Optimizer, OptimizerConfig};
pub use tensors::{images_to_tensor, labels_to_tensor};

#[cfg(test)]
mod tests;
