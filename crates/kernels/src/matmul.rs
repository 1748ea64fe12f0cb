//! A small float32 matrix product: `c = a · b`, with `a` read through strides (so a transposed
//! operand needs no copy) and `b`, `c` row-major.
//!
//! Register tiling as in BLAS micro-kernels: each tile of `c` (6 rows, two SIMD vectors wide)
//! lives in registers over the whole `k` loop, every step of which loads two vectors of `b`,
//! broadcasts 6 values of `a` (packed beforehand, so they are adjacent) and does 12 fused
//! multiply-adds. `pulp` compiles it once per instruction set and picks the best at run time.
//! There is no cache blocking: callers keep `b` small enough for the L2 cache (at most `[3136,
//! 64]`, 800 KB, the representation layer's chunk; the other products have `k`, `n` ≤ 256), and
//! `a` is read once per call.

use pulp::{Arch, Simd, WithSimd};

/// Rows of `c` per register tile.
const TILE_ROWS: usize = 6;

/// `c = a · b` where `a` is `[m, k]` with element `(i, p)` at `a[i * rows + p * cols]`
/// (`strides = (rows, cols)`), `b` is `[k, n]` row-major and `c` is `[m, n]` row-major;
/// `m = c.len() / n`, `k = b.len() / n`.
///
/// # Panics
/// If the slices are too short for those shapes (a caller bug).
pub fn matmul(a: &[f32], strides: (usize, usize), b: &[f32], n: usize, c: &mut [f32]) {
    if n == 0 {
        return;
    }
    Arch::new().dispatch(Matmul { a, strides, b, n, c });
}

struct Matmul<'a> {
    a: &'a [f32],
    strides: (usize, usize),
    b: &'a [f32],
    n: usize,
    c: &'a mut [f32],
}

impl WithSimd for Matmul<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) {
        let Matmul { a, strides, b, n, c } = self;
        let (m, k) = (c.len() / n, b.len() / n);
        let mut packed = vec![0f32; TILE_ROWS * k];
        let mut first_row = 0;
        for rows in c.chunks_mut(TILE_ROWS * n) {
            let tile_rows = rows.len() / n;
            pack(a, strides, first_row, tile_rows, k, &mut packed);
            // The last few rows (`m` not a multiple of the tile) make one shorter tile.
            match tile_rows {
                TILE_ROWS => columns::<S, TILE_ROWS>(simd, &packed, b, n, rows),
                5 => columns::<S, 5>(simd, &packed, b, n, rows),
                4 => columns::<S, 4>(simd, &packed, b, n, rows),
                3 => columns::<S, 3>(simd, &packed, b, n, rows),
                2 => columns::<S, 2>(simd, &packed, b, n, rows),
                _ => columns::<S, 1>(simd, &packed, b, n, rows),
            }
            first_row += tile_rows;
        }
        debug_assert_eq!(first_row, m);
    }
}

/// Rows `first..first + rows` of `a`, interleaved: `packed[p * rows + r] = a(first + r, p)`.
#[inline(always)]
fn pack(
    a: &[f32],
    (row_stride, col_stride): (usize, usize),
    first: usize,
    rows: usize,
    k: usize,
    packed: &mut [f32],
) {
    for (p, column) in packed.chunks_exact_mut(rows).take(k).enumerate() {
        for (r, value) in column.iter_mut().enumerate() {
            *value = a[(first + r) * row_stride + p * col_stride];
        }
    }
}

/// All of `ROWS` rows of `c`: full tiles two vectors wide, then one vector, then a partial one.
#[inline(always)]
fn columns<S: Simd, const ROWS: usize>(
    simd: S,
    packed: &[f32],
    b: &[f32],
    n: usize,
    c: &mut [f32],
) {
    let lanes = S::F32_LANES;
    let mut column = 0;
    while column + 2 * lanes <= n {
        tile::<S, ROWS, 2>(simd, packed, b, n, c, column, lanes);
        column += 2 * lanes;
    }
    if column + lanes <= n {
        tile::<S, ROWS, 1>(simd, packed, b, n, c, column, lanes);
        column += lanes;
    }
    if column < n {
        tile::<S, ROWS, 1>(simd, packed, b, n, c, column, n - column);
    }
}

/// Columns `first..first + VECTORS * lanes` of `ROWS` rows of `c` (the last vector only
/// `width` lanes wide, loaded and stored partially when that is under a full vector).
#[inline(always)]
fn tile<S: Simd, const ROWS: usize, const VECTORS: usize>(
    simd: S,
    packed: &[f32],
    b: &[f32],
    n: usize,
    c: &mut [f32],
    first: usize,
    width: usize,
) {
    let lanes = S::F32_LANES;
    let span = (VECTORS - 1) * lanes + width;
    let full = width == lanes;
    let mut sums = [[simd.splat_f32s(0.0); VECTORS]; ROWS];
    for (values, b_row) in packed.chunks_exact(ROWS).zip(b.chunks_exact(n)) {
        let b_row = &b_row[first..first + span];
        let vectors: [S::f32s; VECTORS] = std::array::from_fn(|v| {
            let part = &b_row[v * lanes..];
            if full { S::as_simd_f32s(part).0[0] } else { simd.partial_load_f32s(part) }
        });
        for (sum, &value) in sums.iter_mut().zip(values) {
            let value = simd.splat_f32s(value);
            for (s, &vector) in sum.iter_mut().zip(&vectors) {
                *s = simd.mul_add_e_f32s(value, vector, *s);
            }
        }
    }
    for (sum, c_row) in sums.iter().zip(c.chunks_exact_mut(n)) {
        let c_row = &mut c_row[first..first + span];
        for (v, &s) in sum.iter().enumerate() {
            let part = &mut c_row[v * lanes..];
            if full { S::as_mut_simd_f32s(part).0[0] = s } else { simd.partial_store_f32s(part, s) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::matmul;

    /// The product by the textbook triple loop, in float64.
    fn reference(a: &[f32], (rs, cs): (usize, usize), b: &[f32], m: usize, n: usize) -> Vec<f32> {
        let k = b.len() / n;
        let mut c = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                let sum: f64 =
                    (0..k).map(|p| f64::from(a[i * rs + p * cs]) * f64::from(b[p * n + j])).sum();
                c[i * n + j] = sum as f32;
            }
        }
        c
    }

    fn values(len: usize, seed: u32) -> Vec<f32> {
        (0..len as u32)
            .map(|i| ((i.wrapping_mul(2_654_435_761) ^ seed) % 1000) as f32 / 500.0 - 1.0)
            .collect()
    }

    #[test]
    fn agrees_with_the_triple_loop_on_every_edge_shape() {
        // Rows around the tile height, columns around one and two vectors of every instruction
        // set (4, 8, 16 lanes), `a` both row-major and transposed.
        for (m, k, n) in [
            (1, 1, 1),
            (6, 3, 16),
            (7, 5, 10),
            (13, 17, 33),
            (128, 256, 64),
            (64, 128, 10),
            (10, 128, 64),
            (5, 2, 47),
        ] {
            let b = values(k * n, 7);
            let a_rows = values(m * k, 3);
            let mut a_transposed = vec![0f32; m * k];
            for i in 0..m {
                for p in 0..k {
                    a_transposed[p * m + i] = a_rows[i * k + p];
                }
            }
            for (a, strides) in [(&a_rows, (k, 1)), (&a_transposed, (1, m))] {
                let mut c = vec![f32::NAN; m * n];
                matmul(a, strides, &b, n, &mut c);
                let expected = reference(a, strides, &b, m, n);
                for (index, (got, want)) in c.iter().zip(&expected).enumerate() {
                    assert!(
                        (got - want).abs() <= 1e-4 * (1.0 + want.abs()),
                        "{m}x{k}x{n} {strides:?} [{index}]: {got} vs {want}"
                    );
                }
            }
        }
    }
}
