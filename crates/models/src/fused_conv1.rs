//! `conv1` → relu → 2x2 average pool in one pass over each image, for CPU inference.
//!
//! With a single input channel, the 3x3 convolution does only 9 multiply-adds per output value,
//! so running it, relu and the pooling as three libtorch kernels is bound by memory traffic over
//! the `[N, 32, 28, 28]` intermediate (100 KB per image, written and read back three times).
//! Here each pre-pool value lives only in registers: the 32 channels of one position are a few
//! SIMD vectors, and only the pooled result (a quarter of the size) is written. The loops are
//! plain Rust; `pulp` compiles them once per instruction set (AVX-512, AVX2, baseline) and picks
//! the best the CPU has at run time.

use pulp::{Arch, Simd, WithSimd};
use tch::{Device, Kind, Tensor};

use crate::bf16;
use crate::image_threads::for_each_share;

/// Output channels of the fused layer (`BaseCnn`'s conv1).
pub(crate) const CHANNELS: usize = 32;
/// Taps of a 3x3 kernel.
const TAPS: usize = 9;
/// Images below which another thread does not pay: starting one costs about as much as the pass
/// over 20 images here, and right after a libtorch operation its worker threads still spin on
/// the other cores, so a batch of the usual size (64 to 256) runs on the caller's thread alone.
const MIN_IMAGES_PER_THREAD: usize = 512;
/// Image height and width the pass is compiled for (MNIST's); other sizes take libtorch's path.
const SIDE: usize = 28;
/// With the convolution's zero border.
const PADDED: usize = SIDE + 2;
/// Pooled height and width.
const POOLED_SIDE: usize = SIDE / 2;
/// Floats of one image's pooled output.
const POOLED_LEN: usize = POOLED_SIDE * POOLED_SIDE * CHANNELS;

/// `relu(conv2d(images, weight, bias, padding 1))` average-pooled over 2x2 windows, for
/// `images` `[N, 1, 28, 28]` on the CPU and `weight` `[32, 1, 3, 3]`; the result is
/// `[N, 32, 14, 14]` with channels-last strides, in `images`' kind (computed in float32 and
/// rounded once, to nearest even, when that kind is bfloat16).
/// `None` when the inputs are not of that form (another device, other shapes), for the caller to
/// take libtorch's path.
pub(crate) fn conv3x3_relu_avgpool2(
    images: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
) -> Option<Tensor> {
    let conv1 = Conv1::new(weight, bias)?;
    let side = SIDE as i64;
    let [n, 1, height, width] = images.size()[..] else { return None };
    if images.device() != Device::Cpu || (height, width) != (side, side) {
        return None;
    }
    let n = n as usize;
    let pixels = Vec::<f32>::try_from(images.to_kind(Kind::Float).contiguous().view(-1)).ok()?;
    let shape = [n, POOLED_SIDE, POOLED_SIDE, CHANNELS].map(|d| d as i64);
    let pooled = if images.kind() == Kind::BFloat16 {
        bf16::from_bits(&conv1.run::<Bf16>(&pixels, n), &shape)
    } else {
        Tensor::from_slice(&conv1.run::<f32>(&pixels, n)).view(shape).to_kind(images.kind())
    };
    Some(pooled.permute([0, 3, 1, 2]))
}

/// The layer's weights, laid out for the pass.
pub(crate) struct Conv1 {
    /// `[tap][out]`: one tap's weights for all channels are contiguous.
    taps: [[f32; CHANNELS]; TAPS],
    bias: [f32; CHANNELS],
}

impl Conv1 {
    /// Floats of one image's input (`[28, 28]`).
    pub(crate) const IMAGE_LEN: usize = SIDE * SIDE;
    /// Floats of one image's output (`[14, 14, 32]`, channels last).
    pub(crate) const OUTPUT_LEN: usize = POOLED_LEN;

    /// From `weight` `[32, 1, 3, 3]` and `bias` `[32]` on the CPU (any float kind); `None` for
    /// other shapes or devices.
    pub(crate) fn new(weight: &Tensor, bias: &Tensor) -> Option<Self> {
        let on_cpu = weight.device() == Device::Cpu && bias.device() == Device::Cpu;
        if !on_cpu
            || weight.size() != [CHANNELS as i64, 1, 3, 3]
            || bias.size() != [CHANNELS as i64]
        {
            return None;
        }
        let weight = Vec::<f32>::try_from(
            weight.to_kind(Kind::Float).reshape([CHANNELS as i64, TAPS as i64]).tr().flatten(0, -1),
        )
        .ok()?;
        let mut taps = [[0f32; CHANNELS]; TAPS];
        for (tap, row) in taps.iter_mut().zip(weight.chunks_exact(CHANNELS)) {
            tap.copy_from_slice(row);
        }
        let bias = Vec::<f32>::try_from(bias.to_kind(Kind::Float)).ok()?.try_into().ok()?;
        Some(Conv1 { taps, bias })
    }

    /// The pass over `n` images, on as many threads as pays (see `MIN_IMAGES_PER_THREAD`).
    fn run<T: Store>(&self, pixels: &[f32], n: usize) -> Vec<T::Element> {
        let mut pooled = vec![T::Element::default(); n * POOLED_LEN];
        let pass = |images: &[f32], out: &mut [T::Element]| self.pass::<T>(images, out);
        for_each_share(pixels, SIDE * SIDE, &mut pooled, POOLED_LEN, MIN_IMAGES_PER_THREAD, pass);
        pooled
    }

    /// The pass over whole images on the calling thread, float32 out: `images` holds
    /// `IMAGE_LEN` floats per image, `out` `OUTPUT_LEN`.
    pub(crate) fn pass_f32(&self, images: &[f32], out: &mut [f32]) {
        self.pass::<f32>(images, out);
    }

    fn pass<T: Store>(&self, images: &[f32], out: &mut [T::Element]) {
        let Conv1 { taps, bias } = self;
        Arch::new().dispatch(Pass::<T> { images, taps, bias, out });
    }
}

/// How the pass stores a finished float32 value.
trait Store {
    /// The stored element.
    type Element: tch::kind::Element + Copy + Default + Send;
    /// `value` as stored.
    fn store(value: f32) -> Self::Element;
}

impl Store for f32 {
    type Element = f32;

    #[inline(always)]
    fn store(value: f32) -> f32 {
        value
    }
}

/// bfloat16 output, as its bits (see `bf16::bits`).
struct Bf16;

impl Store for Bf16 {
    type Element = i16;

    #[inline(always)]
    fn store(value: f32) -> i16 {
        bf16::bits(value) as i16
    }
}

/// One thread's share: whole images in, their pooled outputs (channels last) out.
struct Pass<'a, T: Store> {
    images: &'a [f32],
    taps: &'a [[f32; CHANNELS]; TAPS],
    bias: &'a [f32; CHANNELS],
    out: &'a mut [T::Element],
}

impl<T: Store> WithSimd for Pass<'_, T> {
    type Output = ();

    // Inlined into pulp's per-instruction-set entry points, so the loops below are compiled
    // (and auto-vectorised) once for each of them.
    #[inline(always)]
    fn with_simd<S: Simd>(self, _simd: S) {
        let Pass { images, taps, bias, out } = self;
        // The image with a zero border of 1 (the convolution's padding).
        let mut padded = [[0f32; PADDED]; PADDED];
        for (image, out) in images.chunks_exact(SIDE * SIDE).zip(out.chunks_exact_mut(POOLED_LEN)) {
            for (row, pixels) in padded[1..=SIDE].iter_mut().zip(image.chunks_exact(SIDE)) {
                row[1..=SIDE].copy_from_slice(pixels);
            }
            for (index, cell) in out.chunks_exact_mut(CHANNELS).enumerate() {
                let (top, left) = (2 * (index / POOLED_SIDE), 2 * (index % POOLED_SIDE));
                let mut sum = [0f32; CHANNELS];
                for (y, x) in [(top, left), (top, left + 1), (top + 1, left), (top + 1, left + 1)] {
                    let mut value = *bias;
                    for (tap, weights) in taps.iter().enumerate() {
                        let pixel = padded[y + tap / 3][x + tap % 3];
                        // A plain multiply and add, not `mul_add`: that is a slow library call
                        // where the CPU has no FMA, and the two round alike everywhere.
                        for (v, w) in value.iter_mut().zip(weights) {
                            *v += w * pixel;
                        }
                    }
                    for (s, v) in sum.iter_mut().zip(value) {
                        *s += v.max(0.0);
                    }
                }
                for (c, s) in cell.iter_mut().zip(sum) {
                    *c = T::store(s * 0.25);
                }
            }
        }
    }
}
