//! Float32 CPU kernels written in plain Rust over `pulp`'s SIMD types, shared by `models`
//! (the Winograd convolution of inference) and `trainer` (the head's CPU step).
//!
//! `pulp` compiles each kernel once per instruction set (AVX-512, AVX2+FMA, baseline) and picks
//! the best the CPU has at run time. No libtorch: the crate builds and tests on its own.

mod matmul;

pub use matmul::matmul;
