//! The frozen part run once: feature extraction and its cache (memory or disk).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use mnist_io::Dataset;
use tch::{Device, Kind, Tensor};

use models::StagedBase;

use crate::checkpoint::{self, KIND_KEY};
use crate::error::Result;
use crate::fingerprint::{dataset_hex, hex};
use crate::fit::{EVAL_BATCH, Event};

/// How the frozen part's outputs are obtained during training.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FeatureCache {
    /// Run the frozen part once per dataset and keep its outputs in memory.
    Memory,
    /// As `Memory`, and also keep them in this folder, keyed by the frozen part's fingerprint,
    /// the datasets' hash and the split point; reused while all three match.
    Disk(PathBuf),
    /// No cache: run the frozen part on every batch (the seed's way; slower).
    Off,
}

/// The numeric precision of the frozen part's forward.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// float32, exactly as trained.
    #[default]
    F32,
    /// bfloat16 weights and activations (outputs converted back to float32), at a small
    /// accuracy cost the report shows. Faster on CPUs with bf16 instructions; on other CPUs
    /// [`models::BaseCnn`] rounds each layer's output to bf16 over float32 arithmetic, about as
    /// fast as float32.
    Bf16,
}

impl Precision {
    /// The tensor kind of this precision.
    pub fn kind(self) -> Kind {
        match self {
            Precision::F32 => Kind::Float,
            Precision::Bf16 => Kind::BFloat16,
        }
    }
}

/// Runs stages `0..split` of `base` over `inputs` in eval mode without gradients, in batches,
/// each converted to `kind` on the way in (the kind of `base`'s weights) and to float32 on the
/// way out.
///
/// # Shapes
/// `inputs`: `[N, 1, 28, 28]` → `[N, ...]`, the output of stage `split - 1`.
pub fn extract(
    base: &dyn StagedBase,
    split: usize,
    inputs: &Tensor,
    kind: Kind,
    device: Device,
    events: &mut dyn FnMut(Event),
) -> Tensor {
    let n = inputs.size()[0];
    let batches = (n as usize).div_ceil(EVAL_BATCH);
    events(Event::PhaseStarted { label: "extract".to_owned(), steps: batches as u64 });
    let mut outputs = Vec::with_capacity(batches);
    tch::no_grad(|| {
        for start in (0..n).step_by(EVAL_BATCH) {
            let length = (n - start).min(EVAL_BATCH as i64);
            let batch = inputs.narrow(0, start, length).to_device(device).to_kind(kind);
            outputs.push(base.forward_stages(&batch, 0..split, false).to_kind(Kind::Float));
            events(Event::Step);
        }
    });
    events(Event::PhaseFinished);
    Tensor::cat(&outputs, 0)
}

/// The cache file for a frozen part (architecture and weights), datasets and split point.
pub(crate) fn cache_path(
    dir: &Path,
    architecture: &str,
    frozen_fingerprint: &str,
    train: &Dataset,
    test: &Dataset,
    split: usize,
    precision: Precision,
) -> PathBuf {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    let parts = [
        architecture.to_owned(),
        frozen_fingerprint.to_owned(),
        dataset_hex(train),
        dataset_hex(test),
        split.to_string(),
        format!("{precision:?}"),
    ];
    for part in parts {
        hasher.update(part.as_bytes());
        hasher.update([0]);
    }
    let key = hex(&hasher.finalize());
    dir.join(format!("features-{}.safetensors", &key[..16]))
}

/// Loads cached `(train, test)` features from `path`, if a readable cache is there.
pub(crate) fn load_cached(path: &Path, device: Device) -> Option<(Tensor, Tensor)> {
    let cached = checkpoint::load(path, device).ok()?;
    cached.expect_kind(path, "features").ok()?;
    Some((cached.tensor("train")?.shallow_clone(), cached.tensor("test")?.shallow_clone()))
}

/// Stores `(train, test)` features at `path`.
pub(crate) fn store(path: &Path, train: &Tensor, test: &Tensor) -> Result<()> {
    let tensors =
        [("train".to_owned(), train.shallow_clone()), ("test".to_owned(), test.shallow_clone())];
    checkpoint::save(path, &tensors, BTreeMap::from([(KIND_KEY.to_owned(), "features".to_owned())]))
}
