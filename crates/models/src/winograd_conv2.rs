//! `conv2` → relu → 2x2 average pool for CPU inference, by Winograd's F(2x2, 3x3) algorithm.
//!
//! `conv2` is 78% of the base's arithmetic. Winograd's minimal filtering computes each 2x2 block
//! of a 3x3 convolution's output from a 4x4 block of its input with 16 multiplies per input
//! channel instead of 36 (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks",
//! 2015): the input block `d` and the kernel `g` are transformed (`V = Bᵀ d B`, `U = G g Gᵀ`),
//! multiplied element by element and summed over input channels, and the sum transformed back
//! (`Y = Aᵀ M A`). Summed over channels, each of the 16 elements is a matrix product
//! (`[blocks, 32] · [32, 64]`), which goes through [`kernels::matmul`]; the transforms only add
//! and subtract (their constants are 0, ±1 and ±½), so the result matches the direct convolution
//! to float32 rounding.
//!
//! The 14x14 map splits into 7x7 blocks of 2x2, which are exactly the windows of the 2x2 pooling
//! that follows: each block's four outputs get their bias and relu and are averaged at once, so
//! the pre-pool map is never stored. The output is written flattened in (channel, row, column)
//! order, the representation layer's input.

use pulp::{Arch, Simd, WithSimd};
use tch::{Device, Tensor};

use crate::bf16;
use crate::fused_conv1::CHANNELS as IN_CHANNELS;
use crate::image_threads::for_each_share;

/// Output channels (`BaseCnn`'s conv2).
pub(crate) const OUT_CHANNELS: usize = 64;
/// Input height and width the pass is compiled for; other sizes take libtorch's path.
const SIDE: usize = 14;
/// With the convolution's zero border.
const PADDED: usize = SIDE + 2;
/// 2x2 output blocks per row and column: also the pooled side.
const BLOCKS_PER_SIDE: usize = SIDE / 2;
/// 2x2 output blocks per image.
const BLOCKS: usize = BLOCKS_PER_SIDE * BLOCKS_PER_SIDE;
/// Elements of a transformed 4x4 block: one matrix product each.
const POINTS: usize = 16;
/// Floats of one image's input (`[14, 14, 32]`, channels last).
const IMAGE_LEN: usize = SIDE * SIDE * IN_CHANNELS;
/// Floats of one image's pooled output (`[64, 7, 7]`).
const POOLED_LEN: usize = OUT_CHANNELS * BLOCKS;
/// Images below which another thread does not pay (one image is ~0.1 ms of work here).
const MIN_IMAGES_PER_THREAD: usize = 8;

/// `avg_pool2(relu(conv2d(xs, weight, bias, padding 1)))` flattened to `[N, 64 * 7 * 7]`
/// (channel, row, column order), for float32 or bfloat16 `xs` `[N, 32, 14, 14]` on the CPU (any
/// strides) and `weight` `[64, 32, 3, 3]`; the result is in `xs`' kind (computed in float32 and
/// rounded once when that kind is bfloat16). `None` when the inputs are not of that form
/// (another device or kind, other shapes), for the caller to take libtorch's path.
pub(crate) fn conv3x3_relu_avgpool2_flat(
    xs: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
) -> Option<Tensor> {
    let conv2 = Conv2::new(weight, bias)?;
    let [n, channels, height, width] = xs.size()[..] else { return None };
    let side = SIDE as i64;
    if xs.device() != Device::Cpu || (channels, height, width) != (IN_CHANNELS as i64, side, side) {
        return None;
    }
    // Channels last: one pixel's 32 channels are adjacent, the unit the input transform works in.
    let pixels = bf16::to_f32(&xs.permute([0, 2, 3, 1]))?;
    let mut pooled = vec![0f32; n as usize * POOLED_LEN];
    let pass = |images: &[f32], out: &mut [f32]| conv2.pass(images, out, Order::ImageMajor);
    for_each_share(&pixels, IMAGE_LEN, &mut pooled, POOLED_LEN, MIN_IMAGES_PER_THREAD, pass);
    Some(bf16::from_f32(&pooled, &[n, POOLED_LEN as i64], xs.kind()))
}

/// The layer's weights, transformed for the pass.
pub(crate) struct Conv2 {
    /// `U`, `[16 points][32 in][64 out]` (see `transform_weight`).
    transformed: Vec<f32>,
    bias: [f32; OUT_CHANNELS],
}

/// How a pass lays out its output.
#[derive(Clone, Copy)]
pub(crate) enum Order {
    /// `[image][feature]`: each image's flattened map in turn.
    ImageMajor,
    /// `[feature][image]`: the transpose, as the `b` operand of a product by the next layer's
    /// weight.
    FeatureMajor,
}

impl Conv2 {
    /// Floats of one image's output (`[64, 7, 7]`, flattened).
    pub(crate) const OUTPUT_LEN: usize = POOLED_LEN;

    /// From float32 or bfloat16 `weight` `[64, 32, 3, 3]` and `bias` `[64]` on the CPU; `None`
    /// otherwise.
    pub(crate) fn new(weight: &Tensor, bias: &Tensor) -> Option<Self> {
        let on_cpu = weight.device() == Device::Cpu && bias.device() == Device::Cpu;
        if !on_cpu
            || weight.size() != [OUT_CHANNELS as i64, IN_CHANNELS as i64, 3, 3]
            || bias.size() != [OUT_CHANNELS as i64]
        {
            return None;
        }
        let weight = bf16::to_f32(weight)?;
        let bias = bf16::to_f32(bias)?.try_into().ok()?;
        Some(Conv2 { transformed: transform_weight(&weight), bias })
    }

    /// The pass over whole images on the calling thread: `images` holds `IMAGE_LEN` floats per
    /// image, `out` `OUTPUT_LEN` per image, in `order`.
    pub(crate) fn pass(&self, images: &[f32], out: &mut [f32], order: Order) {
        let Conv2 { transformed, bias } = self;
        Arch::new().dispatch(Pass { images, transformed, bias, out, order });
    }
}

/// `U = G g Gᵀ` for every (input, output) channel pair of `weight` `[64, 32, 3, 3]`, laid out
/// `[16 points][32 in][64 out]`: point `p`'s slice is the `b` operand of its matrix product.
fn transform_weight(weight: &[f32]) -> Vec<f32> {
    // G = [[1, 0, 0], [½, ½, ½], [½, -½, ½], [0, 0, 1]], applied to a 3-vector.
    let g = |[a, b, c]: [f32; 3]| [a, 0.5 * (a + b + c), 0.5 * (a - b + c), c];
    let mut transformed = vec![0f32; POINTS * IN_CHANNELS * OUT_CHANNELS];
    for (pair, kernel) in weight.chunks_exact(9).enumerate() {
        let (out, input) = (pair / IN_CHANNELS, pair % IN_CHANNELS);
        // Columns of G g (G applied down each of the kernel's 3 columns) ...
        let columns: [[f32; 4]; 3] =
            std::array::from_fn(|x| g([0, 1, 2].map(|y| kernel[3 * y + x])));
        let [c0, c1, c2] = columns;
        for row in 0..4 {
            // ... then G along each resulting row.
            let values = g([c0[row], c1[row], c2[row]]);
            for (col, value) in values.into_iter().enumerate() {
                let point = 4 * row + col;
                transformed[(point * IN_CHANNELS + input) * OUT_CHANNELS + out] = value;
            }
        }
    }
    transformed
}

/// One thread's share: whole images in (channels last), their pooled outputs out (in `order`).
struct Pass<'a> {
    images: &'a [f32],
    transformed: &'a [f32],
    bias: &'a [f32; OUT_CHANNELS],
    out: &'a mut [f32],
    order: Order,
}

impl WithSimd for Pass<'_> {
    type Output = ();

    // Inlined into pulp's per-instruction-set entry points, so the code below is compiled once
    // for each of them, with that set's vectors.
    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) {
        let Pass { images, transformed, bias, out, order } = self;
        let n = images.len() / IMAGE_LEN;
        let lanes = S::F32_LANES;
        // The image with a zero border of 1 (the convolution's padding).
        let mut padded = vec![[0f32; IN_CHANNELS]; PADDED * PADDED];
        // Transformed input blocks, `[16 points][49 blocks][32 in]`, their products with the
        // transformed kernels, `[16 points][49 blocks][64 out]`, and the pooled blocks.
        let mut inputs = vec![[0f32; IN_CHANNELS]; POINTS * BLOCKS];
        let mut products = vec![[0f32; OUT_CHANNELS]; POINTS * BLOCKS];
        let mut pooled = vec![[0f32; OUT_CHANNELS]; BLOCKS];
        for (index, image) in images.chunks_exact(IMAGE_LEN).enumerate() {
            for (y, row) in image.chunks_exact(SIDE * IN_CHANNELS).enumerate() {
                let cells = &mut padded[(y + 1) * PADDED + 1..][..SIDE];
                for (cell, pixel) in cells.iter_mut().zip(row.chunks_exact(IN_CHANNELS)) {
                    cell.copy_from_slice(pixel);
                }
            }
            for block in 0..BLOCKS {
                let (top, left) = (2 * (block / BLOCKS_PER_SIDE), 2 * (block % BLOCKS_PER_SIDE));
                for first in (0..IN_CHANNELS).step_by(lanes) {
                    let d = |y: usize, x: usize| {
                        load::<S>(&padded[(top + y) * PADDED + left + x][first..])
                    };
                    for (point, value) in transform_input(simd, d).into_iter().enumerate() {
                        store::<S>(&mut inputs[point * BLOCKS + block][first..], value);
                    }
                }
            }
            let per_point = inputs
                .chunks_exact(BLOCKS)
                .zip(transformed.chunks_exact(IN_CHANNELS * OUT_CHANNELS))
                .zip(products.chunks_exact_mut(BLOCKS));
            for ((a, b), c) in per_point {
                let (a, c) = (a.as_flattened(), c.as_flattened_mut());
                kernels::matmul(a, (IN_CHANNELS, 1), b, OUT_CHANNELS, c);
            }
            for (block, pooled) in pooled.iter_mut().enumerate() {
                for first in (0..OUT_CHANNELS).step_by(lanes) {
                    let m = |point: usize| load::<S>(&products[point * BLOCKS + block][first..]);
                    let value = pool_output(simd, m, load::<S>(&bias[first..]));
                    store::<S>(&mut pooled[first..], value);
                }
            }
            // [block][channel] → [channel][block], the flattened map's order.
            let (first, feature_stride) = match order {
                Order::ImageMajor => (index * POOLED_LEN, 1),
                Order::FeatureMajor => (index, n),
            };
            for channel in 0..OUT_CHANNELS {
                for (block, pooled) in pooled.iter().enumerate() {
                    out[first + (channel * BLOCKS + block) * feature_stride] = pooled[channel];
                }
            }
        }
    }
}

/// The first vector of `values`.
#[inline(always)]
fn load<S: Simd>(values: &[f32]) -> S::f32s {
    S::as_simd_f32s(values).0[0]
}

/// Stores `vector` at the start of `values`.
#[inline(always)]
fn store<S: Simd>(values: &mut [f32], vector: S::f32s) {
    S::as_mut_simd_f32s(values).0[0] = vector;
}

/// `V = Bᵀ d B` for the 4x4 block `d(y, x)` (one vector of channels per cell); `V[4 * row + col]`.
// Written out without closures or `array::map`: those are not compiled with the instruction set's
// features, and calls into them from here would not be inlined.
#[inline(always)]
fn transform_input<S: Simd>(simd: S, d: impl Fn(usize, usize) -> S::f32s) -> [S::f32s; POINTS] {
    // Bᵀ = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], down each column of d ...
    let mut columns = [[simd.splat_f32s(0.0); 4]; 4];
    for (x, column) in columns.iter_mut().enumerate() {
        *column = b_transpose(simd, [d(0, x), d(1, x), d(2, x), d(3, x)]);
    }
    // ... then along each row of the result.
    let mut v = [simd.splat_f32s(0.0); POINTS];
    for (row, values) in v.chunks_exact_mut(4).enumerate() {
        let [c0, c1, c2, c3] = &columns;
        values.copy_from_slice(&b_transpose(simd, [c0[row], c1[row], c2[row], c3[row]]));
    }
    v
}

/// `Bᵀ x` for the 4-vector `x`.
#[inline(always)]
fn b_transpose<S: Simd>(simd: S, [a, b, c, d]: [S::f32s; 4]) -> [S::f32s; 4] {
    [simd.sub_f32s(a, c), simd.add_f32s(b, c), simd.sub_f32s(c, b), simd.sub_f32s(b, d)]
}

/// `Aᵀ x` for the 4-vector `x`: Aᵀ = [[1, 1, 1, 0], [0, 1, -1, -1]].
#[inline(always)]
fn a_transpose<S: Simd>(simd: S, [a, b, c, d]: [S::f32s; 4]) -> [S::f32s; 2] {
    [simd.add_f32s(simd.add_f32s(a, b), c), simd.sub_f32s(simd.sub_f32s(b, c), d)]
}

/// The 2x2 output block `Y = Aᵀ M A` of the summed products `m(point)`, plus `bias`, relu, and
/// averaged: the block's pooled value (one vector of channels).
#[inline(always)]
fn pool_output<S: Simd>(simd: S, m: impl Fn(usize) -> S::f32s, bias: S::f32s) -> S::f32s {
    // Aᵀ down each column of M ...
    let mut columns = [[simd.splat_f32s(0.0); 2]; 4];
    for (col, column) in columns.iter_mut().enumerate() {
        *column = a_transpose(simd, [m(col), m(4 + col), m(8 + col), m(12 + col)]);
    }
    // ... then along each of the two resulting rows: the block's four outputs.
    let zero = simd.splat_f32s(0.0);
    let mut sum = zero;
    for row in 0..2 {
        let [c0, c1, c2, c3] = &columns;
        for value in a_transpose(simd, [c0[row], c1[row], c2[row], c3[row]]) {
            sum = simd.add_f32s(sum, simd.max_f32s(simd.add_f32s(value, bias), zero));
        }
    }
    simd.mul_f32s(sum, simd.splat_f32s(0.25))
}
