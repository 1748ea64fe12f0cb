//! The split point: which base tensors are frozen, which are trained, and what the optimizer sees.

use tch::nn::VarStore;

use models::StagedBase;

use crate::checkpoint::named_variables;
use crate::error::{Error, Result};
use crate::optim::OptimizerConfig;

/// Resolves the first trainable stage: `None` means none of the base (only the head trains),
/// which is index `stage_names().len()`.
pub fn split_index(base: &dyn StagedBase, train_from: Option<&str>) -> Result<usize> {
    let stages = base.stage_names();
    match train_from {
        None => Ok(stages.len()),
        Some(name) => {
            stages.iter().position(|stage| *stage == name).ok_or_else(|| Error::UnknownStage {
                name: name.to_owned(),
                known: stages.iter().map(|stage| (*stage).to_owned()).collect(),
            })
        }
    }
}

/// Whether base variable `name` belongs to a stage at or after `split` (and so trains).
pub(crate) fn is_trainable(base: &dyn StagedBase, split: usize, name: &str) -> bool {
    let owner = name.split('.').next().unwrap_or(name);
    base.stage_names()[split..].contains(&owner)
}

/// One tensor in the freeze report.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct TensorRole {
    /// `base.<name>` or `head.<name>`.
    pub name: String,
    /// The tensor's shape.
    pub shape: Vec<i64>,
    /// Its number of elements.
    pub numel: usize,
    /// Whether it is trained (otherwise frozen).
    pub trained: bool,
    /// Whether the optimizer holds it (exactly the trained ones).
    pub in_optimizer: bool,
    /// Bytes of optimizer state kept for it (0 for frozen tensors).
    pub optimizer_state_bytes: usize,
}

/// Every base and head tensor with its role, in name order.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct FreezePlan {
    /// The first trainable stage (`None`: only the head trains).
    pub train_from: Option<String>,
    /// The roles.
    pub tensors: Vec<TensorRole>,
}

impl FreezePlan {
    /// Builds the plan for `base` split at `split`, the head's variables, and `optimizer`.
    pub fn new(
        base: &dyn StagedBase,
        base_store: &VarStore,
        head_store: &VarStore,
        split: usize,
        optimizer: OptimizerConfig,
    ) -> Self {
        let state_tensors = match optimizer {
            OptimizerConfig::Sgd { momentum, .. } => usize::from(momentum != 0.0),
            OptimizerConfig::Adam { .. } => 2,
        };
        let role = |prefix: &str, name: String, tensor: tch::Tensor, trained: bool| {
            let numel = tensor.numel();
            TensorRole {
                name: format!("{prefix}.{name}"),
                shape: tensor.size(),
                numel,
                trained,
                in_optimizer: trained,
                optimizer_state_bytes: if trained { state_tensors * numel * 4 } else { 0 },
            }
        };
        let mut tensors: Vec<TensorRole> = named_variables(base_store)
            .into_iter()
            .map(|(name, tensor)| {
                let trained = is_trainable(base, split, &name);
                role("base", name, tensor, trained)
            })
            .collect();
        tensors.extend(
            named_variables(head_store)
                .into_iter()
                .map(|(name, tensor)| role("head", name, tensor, true)),
        );
        let train_from = base.stage_names().get(split).map(|stage| (*stage).to_owned());
        FreezePlan { train_from, tensors }
    }

    /// Counts: (frozen tensors, frozen elements, trained tensors, trained elements).
    pub fn counts(&self) -> (usize, usize, usize, usize) {
        let mut counts = (0, 0, 0, 0);
        for tensor in &self.tensors {
            if tensor.trained {
                counts.2 += 1;
                counts.3 += tensor.numel;
            } else {
                counts.0 += 1;
                counts.1 += tensor.numel;
            }
        }
        counts
    }
}
