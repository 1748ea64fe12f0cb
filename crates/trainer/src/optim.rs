//! Optimizers over an explicit list of trainable tensors.
//!
//! They are built from named tensors, never from a `VarStore`, so a frozen tensor cannot be
//! stepped, decayed or given state by accident: state exists for exactly the tensors listed.
//! The update rules are PyTorch's (`torch.optim.SGD` with momentum and dampening 0,
//! `torch.optim.Adam`), weight decay added to the gradient. State can be exported as named
//! tensors and restored, so a resumed run continues bit for bit.

use tch::Tensor;

/// Which update rule, with its hyperparameters.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum OptimizerConfig {
    /// SGD with momentum (the seed's defaults: lr 0.1, momentum 0.9).
    Sgd {
        /// Learning rate.
        lr: f64,
        /// Momentum factor (0 disables it).
        momentum: f64,
        /// L2 weight decay, applied to trainable tensors only.
        weight_decay: f64,
    },
    /// Adam.
    Adam {
        /// Learning rate.
        lr: f64,
        /// Decay of the first moment.
        beta1: f64,
        /// Decay of the second moment.
        beta2: f64,
        /// Denominator guard.
        eps: f64,
        /// L2 weight decay, applied to trainable tensors only.
        weight_decay: f64,
    },
}

impl OptimizerConfig {
    /// The learning rate.
    pub fn lr(&self) -> f64 {
        match *self {
            OptimizerConfig::Sgd { lr, .. } | OptimizerConfig::Adam { lr, .. } => lr,
        }
    }

    /// The same rule with another learning rate.
    pub fn with_lr(self, new_lr: f64) -> Self {
        match self {
            OptimizerConfig::Sgd { momentum, weight_decay, .. } => {
                OptimizerConfig::Sgd { lr: new_lr, momentum, weight_decay }
            }
            OptimizerConfig::Adam { beta1, beta2, eps, weight_decay, .. } => {
                OptimizerConfig::Adam { lr: new_lr, beta1, beta2, eps, weight_decay }
            }
        }
    }
}

/// One group of tensors sharing a rule (the head; trainable base layers may get their own rate).
struct Group {
    config: OptimizerConfig,
    params: Vec<(String, Tensor)>,
    /// SGD: momentum buffer per param. Adam: first moment per param.
    first: Vec<Option<Tensor>>,
    /// Adam: second moment per param.
    second: Vec<Option<Tensor>>,
}

/// An optimizer over named tensors, in groups.
pub struct Optimizer {
    groups: Vec<Group>,
    steps: i64,
}

impl Optimizer {
    /// An optimizer with one group per `(config, params)`.
    pub fn new(groups: Vec<(OptimizerConfig, Vec<(String, Tensor)>)>) -> Self {
        let groups = groups
            .into_iter()
            .map(|(config, params)| Group {
                config,
                first: params.iter().map(|_| None).collect(),
                second: params.iter().map(|_| None).collect(),
                params,
            })
            .collect();
        Optimizer { groups, steps: 0 }
    }

    /// Differentiates `loss` with respect to exactly the tensors it updates, and applies one
    /// update. The gradients are returned by autograd rather than accumulated into the tensors'
    /// `.grad`, so there is nothing to zero between steps, and no other tensor (a frozen one)
    /// ever gets a gradient. A tensor `loss` does not depend on is left as it is.
    pub fn step(&mut self, loss: &Tensor) {
        let grads = {
            let params: Vec<&Tensor> =
                self.groups.iter().flat_map(|g| g.params.iter().map(|(_, t)| t)).collect();
            Tensor::run_backward(&[loss], &params, false, false)
        };
        let mut grads = grads.into_iter();
        self.steps += 1;
        let step = self.steps;
        tch::no_grad(|| {
            for group in &mut self.groups {
                for (index, (_, param)) in group.params.iter_mut().enumerate() {
                    let Some(grad) = grads.next() else { return };
                    if !grad.defined() {
                        continue;
                    }
                    update(
                        group.config,
                        param,
                        grad,
                        &mut group.first[index],
                        &mut group.second[index],
                        step,
                    );
                }
            }
        });
    }

    /// The tensors it updates, with their names, in every group.
    pub(crate) fn parameters(&self) -> Vec<(String, Tensor)> {
        self.groups
            .iter()
            .flat_map(|g| g.params.iter().map(|(n, t)| (n.clone(), t.shallow_clone())))
            .collect()
    }

    /// The optimizer's state as named tensors (`<param>.momentum`, `<param>.exp_avg`,
    /// `<param>.exp_avg_sq`) plus the step count, for checkpoints.
    pub fn state(&self) -> (Vec<(String, Tensor)>, i64) {
        let mut state = Vec::new();
        for group in &self.groups {
            let (first_name, second_name) = state_names(group.config);
            for (index, (name, _)) in group.params.iter().enumerate() {
                if let Some(first) = &group.first[index] {
                    state.push((format!("{name}.{first_name}"), first.shallow_clone()));
                }
                if let (Some(second), Some(second_name)) = (&group.second[index], second_name) {
                    state.push((format!("{name}.{second_name}"), second.shallow_clone()));
                }
            }
        }
        (state, self.steps)
    }

    /// Restores state exported by [`state`](Self::state); tensors are looked up by name and
    /// copied, missing ones leave the state empty (as before the first step).
    pub fn restore(&mut self, mut lookup: impl FnMut(&str) -> Option<Tensor>, steps: i64) {
        self.steps = steps;
        for group in &mut self.groups {
            let (first_name, second_name) = state_names(group.config);
            for (index, (name, _)) in group.params.iter().enumerate() {
                group.first[index] = lookup(&format!("{name}.{first_name}"));
                group.second[index] =
                    second_name.and_then(|second| lookup(&format!("{name}.{second}")));
            }
        }
    }
}

/// The names of a rule's per-tensor state: first (momentum or first moment), second (Adam's).
pub(crate) fn state_names(config: OptimizerConfig) -> (&'static str, Option<&'static str>) {
    match config {
        OptimizerConfig::Sgd { .. } => ("momentum", None),
        OptimizerConfig::Adam { .. } => ("exp_avg", Some("exp_avg_sq")),
    }
}

fn update(
    config: OptimizerConfig,
    param: &mut Tensor,
    grad: Tensor,
    first: &mut Option<Tensor>,
    second: &mut Option<Tensor>,
    step: i64,
) {
    match config {
        OptimizerConfig::Sgd { lr, momentum, weight_decay } => {
            let grad = if weight_decay != 0.0 { grad + &*param * weight_decay } else { grad };
            let direction = if momentum != 0.0 {
                match first {
                    Some(buffer) => {
                        let _ = buffer.g_mul_scalar_(momentum).g_add_(&grad);
                        buffer.shallow_clone()
                    }
                    None => {
                        let buffer = grad.copy();
                        *first = Some(buffer.shallow_clone());
                        buffer
                    }
                }
            } else {
                grad
            };
            let _ = param.g_sub_(&(direction * lr));
        }
        OptimizerConfig::Adam { lr, beta1, beta2, eps, weight_decay } => {
            let grad = if weight_decay != 0.0 { grad + &*param * weight_decay } else { grad };
            let exp_avg = first.get_or_insert_with(|| grad.zeros_like());
            let _ = exp_avg.g_mul_scalar_(beta1).g_add_(&(&grad * (1.0 - beta1)));
            let exp_avg_sq = second.get_or_insert_with(|| grad.zeros_like());
            let _ = exp_avg_sq.g_mul_scalar_(beta2).g_add_(&(&grad * &grad * (1.0 - beta2)));
            let bias1 = 1.0 - beta1.powi(step as i32);
            let bias2 = 1.0 - beta2.powi(step as i32);
            let denominator = (exp_avg_sq.sqrt() / bias2.sqrt()).g_add_scalar(eps);
            let _ = param.g_sub_(&(exp_avg.shallow_clone() / denominator * (lr / bias1)));
        }
    }
}
