//! The base CNN.

use std::ops::Range;

use tch::nn::{self, Module};
use tch::{Kind, Tensor};

use crate::staged::StagedBase;
use crate::{LECUN_NORMAL, linear};

/// Height and width of the input images.
pub const IMAGE_SIDE: i64 = 28;
/// Width of the base's representation.
pub const REPRESENTATION_DIM: i64 = 256;
/// Channels after `conv2`, times the 7x7 spatial size left by two 2x2 poolings.
const FLAT_DIM: i64 = 64 * 7 * 7;
/// Stage names, in forward order; the classifier is not a stage (the head replaces it).
const STAGES: [&str; 3] = ["conv1", "conv2", "representation"];

/// Conv(1→32, 3x3, pad 1) → relu → avgpool 2 → Conv(32→64, 3x3, pad 1) → relu → avgpool 2 →
/// flatten (C, H, W order) → Linear(3136→256) `representation` → relu → Linear(256→10)
/// `classifier` → log_softmax.
#[derive(Debug)]
pub struct BaseCnn {
    conv1: nn::Conv2D,
    conv2: nn::Conv2D,
    representation: nn::Linear,
    classifier: nn::Linear,
}

impl BaseCnn {
    /// Creates the layers under `path` (`conv1`, `conv2`, `representation`, `classifier`), with
    /// `n_classes` outputs.
    pub fn new(path: &nn::Path, n_classes: i64) -> Self {
        Self::with_init(path, n_classes, LECUN_NORMAL)
    }

    /// The layers with weights drawn by `ws_init` (zero biases). `Init::Const` draws nothing
    /// from libtorch's global generator, which `inference_copy` relies on.
    fn with_init(path: &nn::Path, n_classes: i64, ws_init: nn::Init) -> Self {
        let conv = |name: &str, in_channels, out_channels| {
            let config = nn::ConvConfig {
                padding: 1,
                ws_init,
                bs_init: nn::Init::Const(0.0),
                ..Default::default()
            };
            nn::conv2d(path / name, in_channels, out_channels, 3, config)
        };
        BaseCnn {
            conv1: conv("conv1", 1, 32),
            conv2: conv("conv2", 32, 64),
            representation: linear(path / "representation", FLAT_DIM, REPRESENTATION_DIM, ws_init),
            classifier: linear(path / "classifier", REPRESENTATION_DIM, n_classes, ws_init),
        }
    }

    /// The whole network.
    ///
    /// # Shapes
    /// `images`: `[N, 1, 28, 28]` float → (`log_probs`: `[N, n_classes]`, `representation`:
    /// `[N, 256]`, after its relu).
    pub fn forward(&self, images: &Tensor) -> (Tensor, Tensor) {
        let representation = self.forward_stages(images, 0..STAGES.len(), false);
        (self.classify(&representation), representation)
    }
}

impl BaseCnn {
    /// Every weight and bias, layer by layer.
    fn tensors(&self) -> Vec<&Tensor> {
        let convs = [&self.conv1, &self.conv2].map(|conv| (&conv.ws, conv.bs.as_ref()));
        let linears =
            [&self.representation, &self.classifier].map(|linear| (&linear.ws, linear.bs.as_ref()));
        convs
            .into_iter()
            .chain(linears)
            .flat_map(|(ws, bs)| std::iter::once(ws).chain(bs))
            .collect()
    }

    /// `conv1` → relu → avg_pool for inference, with the convolution computed as one matrix
    /// product over 3x3 patches in channels-last order: with a single input channel, libtorch's
    /// direct convolution forward is memory-bound and several times slower (70,000 images: about
    /// 1.2 s against 5 s here). Same values as
    /// `conv1.forward(xs).relu().avg_pool2d_default(2)` up to float rounding (tested); the
    /// output is `[N, 32, 14, 14]` with channels-last strides, which `conv2` reads directly.
    fn conv1_stage(&self, xs: &Tensor) -> Tensor {
        let size = xs.size();
        let (n, height, width) = (size[0], size[2], size[3]);
        let out_channels = self.conv1.ws.size()[0];
        let weight = self.conv1.ws.reshape([out_channels, -1]).tr();
        let patches = xs.im2col([3, 3], [1, 1], [1, 1], [1, 1]).transpose(1, 2);
        let mut ys = patches.matmul(&weight);
        if let Some(bias) = &self.conv1.bs {
            ys += bias;
        }
        ys.relu()
            .reshape([n, height, width, out_channels])
            .permute([0, 3, 1, 2])
            .avg_pool2d_default(2)
    }
}

impl StagedBase for BaseCnn {
    fn stage_names(&self) -> &[&'static str] {
        &STAGES
    }

    /// # Shapes
    /// Stage inputs: `conv1` `[N, 1, 28, 28]`, `conv2` `[N, 32, 14, 14]`, `representation`
    /// `[N, 3136]`; the last stage outputs `[N, 256]`.
    fn forward_stages(&self, xs: &Tensor, stages: Range<usize>, train: bool) -> Tensor {
        let mut xs = xs.shallow_clone();
        for stage in stages {
            xs = match stage {
                // Training differentiates through conv1, and libtorch's direct convolution has
                // the faster backward; inference takes the faster forward (see conv1_stage).
                0 if train => self.conv1.forward(&xs).relu().avg_pool2d_default(2),
                0 => self.conv1_stage(&xs),
                1 => self.conv2.forward(&xs).relu().avg_pool2d_default(2).flatten(1, -1),
                _ => self.representation.forward(&xs).relu(),
            };
        }
        xs
    }

    /// # Shapes
    /// `[N, 256]` → `[N, n_classes]`.
    fn classify(&self, representation: &Tensor) -> Tensor {
        self.classifier.forward(representation).log_softmax(-1, Kind::Float)
    }

    fn inference_copy(&self, kind: Kind) -> Option<Box<dyn StagedBase>> {
        let mut store = nn::VarStore::new(self.conv1.ws.device());
        // Zero-initialised, then overwritten: making a copy must not consume the global
        // generator, or it would change the weights of whatever is seeded and drawn next.
        let copy =
            BaseCnn::with_init(&store.root(), self.classifier.ws.size()[0], nn::Init::Const(0.0));
        tch::no_grad(|| {
            for (target, source) in copy.tensors().into_iter().zip(self.tensors()) {
                target.shallow_clone().copy_(source);
            }
        });
        // Converts the variables in place, so the copy's layers see the new kind.
        store.set_kind(kind);
        Some(Box::new(copy))
    }
}
