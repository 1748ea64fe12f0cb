//! The base CNN.

use std::ops::Range;

use tch::nn::{self, Module};
use tch::{Kind, Tensor};

use crate::staged::StagedBase;
use crate::{LECUN_NORMAL, bf16, cpu_inference, fused_conv1, linear, winograd_conv2};

/// Height and width of the input images.
pub const IMAGE_SIDE: i64 = 28;
/// Width of the base's representation.
pub const REPRESENTATION_DIM: i64 = 256;
/// Channels after `conv2`.
const CONV2_CHANNELS: i64 = winograd_conv2::OUT_CHANNELS as i64;
/// Channels after `conv2`, times the 7x7 spatial size left by two 2x2 poolings.
const FLAT_DIM: i64 = CONV2_CHANNELS * 7 * 7;
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
    /// [`StagedBase::architecture`] of this network. Revision 2: 2x2 pooling averages its window
    /// (revision 1 summed it).
    pub const ARCHITECTURE: &'static str = "base-cnn/2";

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
            conv1: conv("conv1", 1, fused_conv1::CHANNELS as i64),
            conv2: conv("conv2", fused_conv1::CHANNELS as i64, CONV2_CHANNELS),
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

    /// `conv1` → relu → avg_pool, as `[N, 32, 14, 14]` with channels-last strides (the layout
    /// `conv2` and the poolings are fastest in on the CPU: 2x2 pooling is several times faster
    /// over contiguous channels).
    ///
    /// Inference on the CPU takes the fused pass of `fused_conv1` (one input channel makes the
    /// separate kernels memory-bound: about 4x slower here). Training, and other devices, take
    /// libtorch's convolution; there the `[N, 1, H, W]` input is given channels-last strides,
    /// which with a single channel describe the same memory but make libtorch pick its
    /// channels-last kernels.
    fn conv1_stage(&self, xs: &Tensor, train: bool) -> Tensor {
        if !train {
            let bias = self.conv1.bs.as_ref();
            if let Some(ys) =
                bias.and_then(|bias| fused_conv1::conv3x3_relu_avgpool2(xs, &self.conv1.ws, bias))
            {
                return ys;
            }
        }
        let size = xs.size();
        let (height, width) = (size[2], size[3]);
        let channels_last =
            xs.contiguous().as_strided(size.as_slice(), [height * width, 1, width, 1], None::<i64>);
        average_pool2(&self.conv1.forward(&channels_last).relu_())
    }

    /// `conv2` → relu → avg_pool, flattened to `[N, 3136]` (channel, row, column order).
    ///
    /// Inference on the CPU in float32 (or bfloat16 where the CPU has no bf16 arithmetic, see
    /// `bf16`) takes `winograd_conv2`'s pass (2.25x fewer multiplies, and the pooling fused in);
    /// training, other kinds and other devices take libtorch's convolution.
    fn conv2_stage(&self, xs: &Tensor, train: bool) -> Tensor {
        if !train && bf16::passes_compute(xs.kind()) {
            let bias = self.conv2.bs.as_ref();
            if let Some(ys) = bias.and_then(|bias| {
                winograd_conv2::conv3x3_relu_avgpool2_flat(xs, &self.conv2.ws, bias)
            }) {
                return ys;
            }
        }
        average_pool2(&self.conv2.forward(xs).relu_()).flatten(1, -1)
    }

    /// Stages `0..3` of CPU inference by `cpu_inference` (float32, or bfloat16 where the CPU
    /// has no bf16 arithmetic): the same result, bit for bit, as running the stages one by one,
    /// without libtorch. `None` where it does not apply.
    fn cpu_representation(&self, images: &Tensor) -> Option<Tensor> {
        if !bf16::passes_compute(images.kind()) {
            return None;
        }
        let conv1 = fused_conv1::Conv1::new(&self.conv1.ws, self.conv1.bs.as_ref()?)?;
        let conv2 = winograd_conv2::Conv2::new(&self.conv2.ws, self.conv2.bs.as_ref()?)?;
        let dense =
            cpu_inference::Dense::new(&self.representation.ws, self.representation.bs.as_ref()?)?;
        cpu_inference::representation(images, &conv1, &conv2, &dense)
    }

    /// The representation layer, then its relu.
    ///
    /// On CPUs with AVX-512 it is computed as a convolution whose kernel covers the whole
    /// `[64, 7, 7]` map: the same products and sums as the linear layer over the flattened map
    /// (its weight `[256, 3136]` viewed as `[256, 64, 7, 7]`, C-H-W order), but run by oneDNN,
    /// which there beats libtorch's matrix product, forward and backward. Elsewhere oneDNN's
    /// convolution is the slower one (on an AVX2 CPU, 2.8x slower forward and backward: 16.5 s
    /// against 5.9 s per pretraining epoch), and other devices have no reason for the detour, so
    /// the layer runs as the plain matrix product.
    ///
    /// Inference on the CPU in float32 (or bfloat16 where the CPU has no bf16 arithmetic) takes
    /// `cpu_inference`'s product instead, whatever the CPU.
    fn representation_stage(&self, flat: &Tensor, train: bool) -> Tensor {
        if !train && bf16::passes_compute(flat.kind()) {
            let dense = self
                .representation
                .bs
                .as_ref()
                .and_then(|bias| cpu_inference::Dense::new(&self.representation.ws, bias));
            if let Some(ys) = dense.and_then(|dense| cpu_inference::dense(flat, &dense)) {
                return ys;
            }
        }
        if !(flat.device() == tch::Device::Cpu && cpu_has_avx512()) {
            return self.representation.forward(flat).relu_();
        }
        let n = flat.size()[0];
        let weight = self.representation.ws.view([REPRESENTATION_DIM, CONV2_CHANNELS, 7, 7]);
        flat.reshape([n, CONV2_CHANNELS, 7, 7])
            .conv2d(&weight, self.representation.bs.as_ref(), [1, 1], [0, 0], [1, 1], 1)
            .flatten(1, -1)
            .relu_()
    }
}

/// Whether the CPU has AVX-512 (its foundation instructions).
fn cpu_has_avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// 2x2 average pooling, stride 2. (Not tch's `avg_pool2d_default`, which passes a divisor
/// override of 1 and so sums the window.)
fn average_pool2(xs: &Tensor) -> Tensor {
    xs.avg_pool2d([2, 2], [2, 2], [0, 0], false, true, None::<i64>)
}

impl StagedBase for BaseCnn {
    fn architecture(&self) -> &'static str {
        Self::ARCHITECTURE
    }

    fn stage_names(&self) -> &[&'static str] {
        &STAGES
    }

    /// # Shapes
    /// Stage inputs: `conv1` `[N, 1, 28, 28]`, `conv2` `[N, 32, 14, 14]`, `representation`
    /// `[N, 3136]`; the last stage outputs `[N, 256]`.
    fn forward_stages(&self, xs: &Tensor, stages: Range<usize>, train: bool) -> Tensor {
        if !train
            && stages == (0..STAGES.len())
            && let Some(representation) = self.cpu_representation(xs)
        {
            return representation;
        }
        let mut xs = xs.shallow_clone();
        for stage in stages {
            xs = match stage {
                0 => self.conv1_stage(&xs, train),
                1 => self.conv2_stage(&xs, train),
                _ => self.representation_stage(&xs, train),
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
