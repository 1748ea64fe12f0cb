//! The refine head.

use tch::nn::{self, Module};
use tch::{Kind, Tensor};

use crate::{LECUN_NORMAL, linear};

/// The head's sizes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeadConfig {
    /// Input width (the base's representation: 256).
    pub input_dim: i64,
    /// Hidden width (64).
    pub hidden_dim: i64,
    /// Number of classes (10).
    pub n_classes: i64,
}

impl Default for HeadConfig {
    fn default() -> Self {
        HeadConfig { input_dim: 256, hidden_dim: 64, n_classes: 10 }
    }
}

/// Linear(input→hidden) `hidden` → relu → Linear(hidden→classes) `final` → log_softmax.
#[derive(Debug)]
pub struct RefineHead {
    hidden: nn::Linear,
    output: nn::Linear,
}

impl RefineHead {
    /// Creates the layers under `path` (`hidden`, `final`).
    pub fn new(path: &nn::Path, config: HeadConfig) -> Self {
        RefineHead {
            hidden: linear(path / "hidden", config.input_dim, config.hidden_dim, LECUN_NORMAL),
            output: linear(path / "final", config.hidden_dim, config.n_classes, LECUN_NORMAL),
        }
    }

    /// Log-probabilities from representations.
    ///
    /// # Shapes
    /// `[N, input_dim]` → `[N, n_classes]`.
    pub fn forward(&self, representation: &Tensor) -> Tensor {
        self.output
            .forward(&self.hidden.forward(representation).relu())
            .log_softmax(-1, Kind::Float)
    }
}
