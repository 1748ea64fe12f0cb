//! `conv1` → relu → 2x2 average pool in one pass over each image, for CPU inference.
//!
//! With a single input channel, the 3x3 convolution does only 9 multiply-adds per output value,
//! so running it, relu and the pooling as three libtorch kernels is bound by memory traffic over
//! the `[N, 32, 28, 28]` intermediate (100 KB per image, written and read back three times).
//! Here each pre-pool value lives only in registers: the 32 channels of one position are a few
//! SIMD vectors, and only the pooled result (a quarter of the size) is written. The loops are
//! plain Rust; `pulp` compiles them for the best instruction set the CPU has (AVX-512 or AVX2
//! with FMA) and picks one at run time.

use pulp::{Arch, Simd, WithSimd};
use tch::{Device, Kind, Tensor};

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
/// `[N, 32, 14, 14]` with channels-last strides, in `images`' kind (computed in float32).
/// `None` when the inputs are not of that form (another device, other shapes), for the caller to
/// take libtorch's path.
pub(crate) fn conv3x3_relu_avgpool2(
    images: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
) -> Option<Tensor> {
    let side = SIDE as i64;
    let [n, 1, height, width] = images.size()[..] else { return None };
    let on_cpu = [images, weight, bias].iter().all(|t| t.device() == Device::Cpu);
    if !on_cpu
        || (height, width) != (side, side)
        || weight.size() != [CHANNELS as i64, 1, 3, 3]
        || bias.size() != [CHANNELS as i64]
    {
        return None;
    }
    let n = n as usize;
    let pixels = Vec::<f32>::try_from(images.to_kind(Kind::Float).contiguous().view(-1)).ok()?;
    // [out, 1, 3, 3] → [tap][out], so one tap's weights for all channels are contiguous.
    let weight = Vec::<f32>::try_from(
        weight.to_kind(Kind::Float).reshape([CHANNELS as i64, TAPS as i64]).tr().flatten(0, -1),
    )
    .ok()?;
    let bias = Vec::<f32>::try_from(bias.to_kind(Kind::Float)).ok()?;
    let mut taps = [[0f32; CHANNELS]; TAPS];
    for (tap, row) in taps.iter_mut().zip(weight.chunks_exact(CHANNELS)) {
        tap.copy_from_slice(row);
    }
    let bias: [f32; CHANNELS] = bias.try_into().ok()?;

    let mut pooled = vec![0f32; n * POOLED_LEN];
    if n > 0 {
        let threads = (n / MIN_IMAGES_PER_THREAD)
            .clamp(1, usize::try_from(tch::get_num_threads()).unwrap_or(1).max(1));
        let per_thread = n.div_ceil(threads);
        let pass = |images: &[f32], out: &mut [f32]| {
            Arch::new().dispatch(Pass { images, taps: &taps, bias: &bias, out });
        };
        std::thread::scope(|scope| {
            let mut chunks = pixels
                .chunks(per_thread * SIDE * SIDE)
                .zip(pooled.chunks_mut(per_thread * POOLED_LEN));
            // The first chunk runs here; the others on threads of their own.
            let first = chunks.next();
            for (images, out) in chunks {
                scope.spawn(move || pass(images, out));
            }
            if let Some((images, out)) = first {
                pass(images, out);
            }
        });
    }
    let shape = [n, POOLED_SIDE, POOLED_SIDE, CHANNELS].map(|d| d as i64);
    Some(Tensor::from_slice(&pooled).view(shape).permute([0, 3, 1, 2]).to_kind(images.kind()))
}

/// One thread's share: whole images in, their pooled outputs (channels last) out.
struct Pass<'a> {
    images: &'a [f32],
    taps: &'a [[f32; CHANNELS]; TAPS],
    bias: &'a [f32; CHANNELS],
    out: &'a mut [f32],
}

impl WithSimd for Pass<'_> {
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
                    *c = s * 0.25;
                }
            }
        }
    }
}
