//! Per-epoch training state on disk, so a killed run resumes where it stopped.
//!
//! After every epoch the trainable tensors, the optimizer's state and the metrics so far are
//! written (atomically) to one safetensors file. A run started again with the same state file
//! and the same configuration key loads them and continues with the next epoch; batch orders
//! derive from `(seed, epoch)`, so no RNG position needs saving and the result is bit-identical
//! to an uninterrupted run on CPU.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use tch::{Device, Tensor};

use crate::checkpoint::{self, KIND_KEY};
use crate::error::Result;
use crate::fit::EpochMetrics;
use crate::optim::Optimizer;

const PARAM_PREFIX: &str = "param/";
const OPTIM_PREFIX: &str = "optim/";

/// Where a run's state lives, and the key that must match to reuse it.
pub(crate) struct RunState {
    pub path: PathBuf,
    pub key: String,
}

impl RunState {
    pub fn new(dir: &Path, phase: &str, key: String) -> Self {
        RunState { path: dir.join(format!("{phase}-state.safetensors")), key }
    }

    /// Loads a matching state into `params` and `optimizer`; returns the metrics of the epochs
    /// it holds. Returns nothing (and touches nothing) when there is no state, it belongs to
    /// another configuration, or it holds more than `max_epochs` epochs.
    pub fn restore(
        &self,
        params: &[(String, Tensor)],
        optimizer: &mut Optimizer,
        device: Device,
        max_epochs: usize,
    ) -> Result<Vec<EpochMetrics>> {
        if !self.path.exists() {
            return Ok(Vec::new());
        }
        let saved = checkpoint::load(&self.path, device)?;
        saved.expect_kind(&self.path, "state")?;
        if saved.meta("key") != Some(self.key.as_str()) {
            tracing::warn!(path = %self.path.display(), "saved state belongs to another configuration; starting over");
            return Ok(Vec::new());
        }
        let metrics: Vec<EpochMetrics> =
            serde_json::from_str(saved.meta("metrics").unwrap_or("[]")).unwrap_or_default();
        if metrics.len() > max_epochs {
            tracing::warn!(path = %self.path.display(), saved = metrics.len(), max_epochs, "saved state has more epochs than asked for; starting over");
            return Ok(Vec::new());
        }
        let steps: i64 = saved.meta("steps").and_then(|steps| steps.parse().ok()).unwrap_or(0);
        for (name, param) in params {
            let Some(value) = saved.tensor(&format!("{PARAM_PREFIX}{name}")) else {
                tracing::warn!(name, "saved state lacks a tensor; starting over");
                return Ok(Vec::new());
            };
            let mut param = param.shallow_clone();
            tch::no_grad(|| param.f_copy_(value))?;
        }
        optimizer.restore(
            |name| saved.tensor(&format!("{OPTIM_PREFIX}{name}")).map(Tensor::copy),
            steps,
        );
        Ok(metrics)
    }

    /// Saves the trainable tensors, the optimizer's state and the metrics so far.
    pub fn save(
        &self,
        params: &[(String, Tensor)],
        optimizer: &Optimizer,
        metrics: &[EpochMetrics],
    ) -> Result<()> {
        let (optimizer_state, steps) = optimizer.state();
        let tensors: Vec<(String, Tensor)> = params
            .iter()
            .map(|(name, tensor)| (format!("{PARAM_PREFIX}{name}"), tensor.shallow_clone()))
            .chain(
                optimizer_state
                    .into_iter()
                    .map(|(name, tensor)| (format!("{OPTIM_PREFIX}{name}"), tensor)),
            )
            .collect();
        let metadata = BTreeMap::from([
            (KIND_KEY.to_owned(), "state".to_owned()),
            ("key".to_owned(), self.key.clone()),
            ("steps".to_owned(), steps.to_string()),
            ("metrics".to_owned(), serde_json::to_string(metrics).unwrap_or_default()),
        ]);
        checkpoint::save(&self.path, &tensors, metadata)
    }
}
