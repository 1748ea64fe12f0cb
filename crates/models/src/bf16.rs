//! bfloat16 in the CPU passes of inference, and the values of tensors moving in and out of them.
//!
//! A CPU with bf16 arithmetic (AVX512-BF16) multiplies bf16 operands and sums in float32; its
//! layers store their outputs in bf16. libtorch's bf16 kernels use it where it exists, and
//! elsewhere convert every operand on the fly, which is several times slower than float32. On
//! such CPUs the passes keep float32 arithmetic and round each layer's output to bf16 instead:
//! the same storage precision, at float32's speed.

use tch::{Kind, Tensor};

/// Whether the CPU has bf16 arithmetic that libtorch's kernels use (on x86, AVX512-BF16; other
/// architectures are left to libtorch).
pub fn cpu_has_native_bf16() -> bool {
    #[cfg(target_arch = "x86_64")]
    return std::arch::is_x86_feature_detected!("avx512bf16");
    #[cfg(not(target_arch = "x86_64"))]
    return true;
}

/// Whether the CPU passes compute a layer whose input is of `kind`: float32 always, bfloat16
/// where the CPU has no bf16 arithmetic (see the module's doc).
pub(crate) fn passes_compute(kind: Kind) -> bool {
    kind == Kind::Float || (kind == Kind::BFloat16 && !cpu_has_native_bf16())
}

/// `value` rounded to the nearest bf16, ties to even, as its bits (for finite values). Integer
/// operations only, so loops that call it still vectorise.
#[inline(always)]
pub(crate) fn bits(value: f32) -> u16 {
    let bits = value.to_bits();
    (bits.wrapping_add(0x7fff + ((bits >> 16) & 1)) >> 16) as u16
}

/// The float32 whose bits start with `bits` (exact: every bf16 is a float32).
fn widen(bits: u16) -> f32 {
    f32::from_bits(u32::from(bits) << 16)
}

/// Rounds each of `values` to the nearest bf16 (kept as float32).
pub(crate) fn round_all(values: &mut [f32]) {
    for value in values {
        *value = widen(bits(*value));
    }
}

/// The values of a float32 or bfloat16 tensor on the CPU, as float32 (exactly), in row-major
/// order; `None` for other kinds.
pub(crate) fn to_f32(tensor: &Tensor) -> Option<Vec<f32>> {
    match tensor.kind() {
        Kind::Float => Vec::<f32>::try_from(tensor.contiguous().view(-1)).ok(),
        Kind::BFloat16 => {
            // Read as int16: tch has no element type that maps to libtorch's bfloat16.
            let raw = tensor.contiguous().view_dtype(Kind::Int16).view(-1);
            let raw = Vec::<i16>::try_from(raw).ok()?;
            Some(raw.into_iter().map(|bits| widen(bits as u16)).collect())
        }
        _ => None,
    }
}

/// A tensor of `kind`, float32 or bfloat16 (each value rounded to nearest, ties to even), of
/// `shape` holding `values`.
pub(crate) fn from_f32(values: &[f32], shape: &[i64], kind: Kind) -> Tensor {
    if kind == Kind::BFloat16 {
        let raw: Vec<i16> = values.iter().map(|&value| bits(value) as i16).collect();
        from_bits(&raw, shape)
    } else {
        Tensor::from_slice(values).view(shape)
    }
}

/// A bfloat16 tensor of `shape` whose elements have the bits `raw` (as `bits` gives them).
pub(crate) fn from_bits(raw: &[i16], shape: &[i64]) -> Tensor {
    // Built as int16 and reinterpreted: tch's `from_slice` of `half::bf16` makes a Half tensor.
    Tensor::from_slice(raw).view_dtype(Kind::BFloat16).view(shape)
}

#[cfg(test)]
mod tests {
    use tch::{Kind, Tensor};

    use super::{bits, from_f32, round_all, to_f32};

    #[test]
    fn rounding_to_nearest_even_matches_the_half_crate() {
        let mut values =
            vec![0.0f32, 1.0, 0.25, 1e-30, 3.0e38, 1.0 + 1.0 / 256.0, 1.0 + 3.0 / 256.0];
        // A sweep over magnitudes and mantissas, ties included.
        values.extend((0..100_000u32).map(|i| f32::from_bits(0x3000_0000 + i * 7919)));
        for &value in &values {
            assert_eq!(bits(value), half::bf16::from_f32(value).to_bits(), "{value:e}");
        }
        let mut rounded = values.clone();
        round_all(&mut rounded);
        for (value, rounded) in values.iter().zip(rounded) {
            assert_eq!(rounded, half::bf16::from_f32(*value).to_f32(), "{value:e}");
        }
    }

    #[test]
    fn tensors_round_trip_and_agree_with_libtorch_conversions() {
        let exact = Tensor::randn([3, 5, 7], (Kind::Float, tch::Device::Cpu));
        let values = to_f32(&exact).unwrap();
        assert_eq!(from_f32(&values, &[3, 5, 7], Kind::Float), exact);

        let low = from_f32(&values, &[3, 5, 7], Kind::BFloat16);
        assert_eq!(low.kind(), Kind::BFloat16);
        assert_eq!(low, exact.to_kind(Kind::BFloat16));
        let widened = to_f32(&low).unwrap();
        assert_eq!(widened, to_f32(&low.to_kind(Kind::Float)).unwrap());
        // Non-contiguous input is read in row-major order.
        let transposed = low.transpose(0, 2);
        assert_eq!(to_f32(&transposed).unwrap(), to_f32(&transposed.to_kind(Kind::Float)).unwrap());
        assert!(to_f32(&exact.to_kind(Kind::Double)).is_none());
    }
}
