//! The base's inference forward on the CPU without libtorch: conv1 (`fused_conv1`), conv2
//! (`winograd_conv2`) and the representation layer (a product through [`kernels::matmul`]),
//! image chunk by image chunk on each thread.
//!
//! Run through libtorch, the layers are separate operators with a tensor between each, and the
//! representation's matrix product runs on libtorch's worker threads, which spin for a while
//! after it and so slow down whatever runs next on the other cores (in a training step over a
//! frozen base that is our own passes: a quarter of the CPU time was spent spinning). Here one
//! chunk of 64 images goes through all three layers while its maps are still in cache, on
//! threads of our own.
//!
//! bfloat16 inputs (where the CPU has no bf16 arithmetic, see `bf16`) go through the same
//! float32 arithmetic, with each layer's output rounded to bf16.

use tch::{Device, Kind, Tensor};

use crate::bf16;
use crate::fused_conv1::Conv1;
use crate::image_threads::for_each_share;
use crate::winograd_conv2::{Conv2, Order};

/// Images a thread takes through all the layers at once: their conv2 output (`[3136, 64]`,
/// 800 KB) is the `b` operand of the representation's product and should stay in the L2 cache.
const CHUNK: usize = 64;
/// Images below which another thread does not pay.
const MIN_IMAGES_PER_THREAD: usize = 16;

/// The representation layer (linear, then relu), laid out for the pass.
pub(crate) struct Dense {
    /// `[out, in]`, row-major: the `a` operand of `out = weight · inputsᵀ`.
    weight: Vec<f32>,
    bias: Vec<f32>,
}

impl Dense {
    /// From float32 or bfloat16 `weight` `[out, in]` and `bias` `[out]` on the CPU, neither
    /// dimension zero; `None` otherwise.
    pub(crate) fn new(weight: &Tensor, bias: &Tensor) -> Option<Self> {
        let [outputs, inputs] = weight.size()[..] else { return None };
        let on_cpu = weight.device() == Device::Cpu && bias.device() == Device::Cpu;
        if !on_cpu || outputs == 0 || inputs == 0 || bias.size() != [outputs] {
            return None;
        }
        Some(Dense { weight: bf16::to_f32(weight)?, bias: bf16::to_f32(bias)? })
    }

    /// The layer's input width (`new` guarantees it is not zero).
    fn inputs(&self) -> usize {
        self.weight.len() / self.bias.len()
    }

    /// `relu(inputs · weightᵀ + bias)` for `m` inputs given transposed (`inputs_t`,
    /// `[in, m]`), written row by row (`[m, out]`) to `out`; `product` is scratch of
    /// `out × m` floats.
    fn forward(&self, inputs_t: &[f32], m: usize, product: &mut [f32], out: &mut [f32]) {
        let outputs = self.bias.len();
        let product = &mut product[..outputs * m];
        kernels::matmul(&self.weight, (self.inputs(), 1), inputs_t, m, product);
        for (i, row) in out.chunks_exact_mut(outputs).take(m).enumerate() {
            for ((value, bias), sums) in row.iter_mut().zip(&self.bias).zip(product.chunks_exact(m))
            {
                *value = (sums[i] + bias).max(0.0);
            }
        }
    }
}

/// `dense` over float32 or bfloat16 `flat` `[N, in]` on the CPU: `[N, out]`, in `flat`'s kind;
/// `None` for other inputs.
pub(crate) fn dense(flat: &Tensor, dense: &Dense) -> Option<Tensor> {
    let inputs = dense.inputs();
    let [n, width] = flat.size()[..] else { return None };
    if flat.device() != Device::Cpu || width as usize != inputs {
        return None;
    }
    let values = bf16::to_f32(flat)?;
    let outputs = dense.bias.len();
    let mut out = vec![0f32; n as usize * outputs];
    let pass = |values: &[f32], out: &mut [f32]| {
        let mut inputs_t = vec![0f32; CHUNK * inputs];
        let mut product = vec![0f32; CHUNK * outputs];
        for (values, out) in values.chunks(CHUNK * inputs).zip(out.chunks_mut(CHUNK * outputs)) {
            let m = values.len() / inputs;
            for (i, row) in values.chunks_exact(inputs).enumerate() {
                for (p, &value) in row.iter().enumerate() {
                    inputs_t[p * m + i] = value;
                }
            }
            dense.forward(&inputs_t[..inputs * m], m, &mut product, out);
        }
    };
    for_each_share(&values, inputs, &mut out, outputs, MIN_IMAGES_PER_THREAD, pass);
    Some(bf16::from_f32(&out, &[n, outputs as i64], flat.kind()))
}

/// conv1 → conv2 → `dense` over float32 or bfloat16 `images` `[N, 1, 28, 28]` on the CPU: the
/// representation, `[N, out]`, in `images`' kind; `None` for other inputs. Equal, bit for bit,
/// to the three layers run one after the other through `conv3x3_relu_avgpool2`,
/// `conv3x3_relu_avgpool2_flat` and [`dense`] (same kernels, same order of sums, and in
/// bfloat16 the same roundings).
pub(crate) fn representation(
    images: &Tensor,
    conv1: &Conv1,
    conv2: &Conv2,
    dense: &Dense,
) -> Option<Tensor> {
    let [n, 1, height, width] = images.size()[..] else { return None };
    let image_len = Conv1::IMAGE_LEN;
    if images.device() != Device::Cpu
        || (height * width) as usize != image_len
        || dense.inputs() != Conv2::OUTPUT_LEN
    {
        return None;
    }
    let pixels = bf16::to_f32(images)?;
    // In bfloat16, each layer's output is rounded (the last one's by `from_f32`).
    let bfloat16 = images.kind() == Kind::BFloat16;
    let round = |values: &mut [f32]| {
        if bfloat16 {
            bf16::round_all(values);
        }
    };
    let outputs = dense.bias.len();
    let mut out = vec![0f32; n as usize * outputs];
    let pass = |pixels: &[f32], out: &mut [f32]| {
        let mut maps = vec![0f32; CHUNK * Conv1::OUTPUT_LEN];
        let mut flat_t = vec![0f32; CHUNK * Conv2::OUTPUT_LEN];
        let mut product = vec![0f32; CHUNK * outputs];
        for (pixels, out) in pixels.chunks(CHUNK * image_len).zip(out.chunks_mut(CHUNK * outputs)) {
            let m = pixels.len() / image_len;
            let maps = &mut maps[..m * Conv1::OUTPUT_LEN];
            conv1.pass_f32(pixels, maps);
            round(maps);
            let flat_t = &mut flat_t[..m * Conv2::OUTPUT_LEN];
            conv2.pass(maps, flat_t, Order::FeatureMajor);
            round(flat_t);
            dense.forward(flat_t, m, &mut product, out);
        }
    };
    for_each_share(&pixels, image_len, &mut out, outputs, MIN_IMAGES_PER_THREAD, pass);
    Some(bf16::from_f32(&out, &[n, outputs as i64], images.kind()))
}
