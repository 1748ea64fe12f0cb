//! The models: [`BaseCnn`], a small CNN that returns both its log-probabilities and its 256-d
//! representation, and [`RefineHead`], the small classifier trained on that representation while
//! the base stays frozen.
//!
//! Every layer lives on a named sub-path (`conv1`, `conv2`, `representation`, `classifier`;
//! `hidden`, `final`) with PyTorch's layouts (conv weight `[out, in, kh, kw]`, linear weight
//! `[out, in]`), so checkpoint keys are stable and load into an equivalent PyTorch module by name.
//! Weights are initialised LeCun-normal (`N(0, 1/fan_in)`), biases zero.
//!
//! A base is described to the trainer by the [`StagedBase`] trait: an ordered list of named
//! stages, each runnable on its own, so a caller can run "up to stage S" (frozen) and "from stage
//! S on" (trainable).

mod base;
mod bf16;
mod cpu_inference;
mod fused_conv1;
mod head;
mod image_threads;
mod staged;
mod winograd_conv2;

pub use base::{BaseCnn, IMAGE_SIDE, REPRESENTATION_DIM};
pub use bf16::cpu_has_native_bf16;
pub use head::{HeadConfig, RefineHead};
pub use staged::StagedBase;

/// LeCun-normal initialisation: `N(0, 1/fan_in)`.
pub(crate) const LECUN_NORMAL: tch::nn::Init = tch::nn::Init::Kaiming {
    dist: tch::nn::init::NormalOrUniform::Normal,
    fan: tch::nn::init::FanInOut::FanIn,
    non_linearity: tch::nn::init::NonLinearity::Linear,
};

/// A linear layer with weights drawn by `ws_init` and a zero bias.
pub(crate) fn linear(
    path: tch::nn::Path,
    in_dim: i64,
    out_dim: i64,
    ws_init: tch::nn::Init,
) -> tch::nn::Linear {
    let config =
        tch::nn::LinearConfig { ws_init, bs_init: Some(tch::nn::Init::Const(0.0)), bias: true };
    tch::nn::linear(path, in_dim, out_dim, config)
}

#[cfg(test)]
mod tests;
