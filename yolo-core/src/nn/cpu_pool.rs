//! Max-pool for inference on the `flex` CPU backend (SPPF's 5x5, stride 1).
//!
//! Burn's `flex` max-pool (0.22.1) goes through its 3-D pool with indices, one scalar
//! comparison at a time: 7% of yolov8n's inference for SPPF's three small pools. A k x k
//! window max is separable (the max over rows of the max over columns), so [`max_pool_same`]
//! does two passes of k comparisons per element, which vectorise, on all cores. Padding acts
//! as -inf, as PyTorch's and Burn's.

use burn::tensor::{DType, Tensor};
use rayon::prelude::*;

use super::cpu_conv::{flex_f32, flex_tensor, supported_device};

/// `k x k` max-pool, stride 1, padding `k / 2` (the output has the input's size); `k` odd.
///
/// Returns `Err(x)` (the input, untouched) when the fast path does not apply: not `flex`,
/// autodiff, not f32, or an even `k`. The caller then runs Burn's pool.
///
/// # Shapes
/// - `x`: `[B, C, H, W]`; output: the same
pub fn max_pool_same(x: Tensor<4>, k: usize) -> Result<Tensor<4>, Tensor<4>> {
    if !supported_device(&x.device()) || x.dtype() != DType::F32 || k % 2 == 0 {
        return Err(x);
    }
    let dims = x.dims();
    let [_, _, h, w] = dims;
    let Some(input) = flex_f32(x.clone()) else {
        return Err(x);
    };
    drop(x);
    let xs = input.as_slice::<f32>().expect("flex_f32 returns contiguous f32 tensors");
    let r = k / 2;
    let mut out = vec![0f32; xs.len()];
    out.par_chunks_mut(h * w).zip(xs.par_chunks(h * w)).for_each_init(
        || vec![0f32; h * w],
        |rowmax, (dst, src)| {
            // Rows: rowmax[y, x] = max over src[y, x - r ..= x + r] (clamped to the row).
            for (d, s) in rowmax.chunks_exact_mut(w).zip(src.chunks_exact(w)) {
                for (x, v) in d.iter_mut().enumerate() {
                    *v = s[x.saturating_sub(r)..(x + r + 1).min(w)].iter().copied().fold(f32::NEG_INFINITY, f32::max);
                }
            }
            // Columns: dst[y] = elementwise max of rowmax[y - r ..= y + r] (clamped), one whole
            // row at a time, which vectorises.
            for (y, d) in dst.chunks_exact_mut(w).enumerate() {
                let (y0, y1) = (y.saturating_sub(r), (y + r + 1).min(h));
                d.copy_from_slice(&rowmax[y0 * w..(y0 + 1) * w]);
                for yy in y0 + 1..y1 {
                    for (a, b) in d.iter_mut().zip(&rowmax[yy * w..(yy + 1) * w]) {
                        *a = a.max(*b);
                    }
                }
            }
        },
    );
    Ok(flex_tensor(out, dims))
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::pool::MaxPool2dConfig;
    use burn::nn::PaddingConfig2d;
    use burn::tensor::Distribution;

    #[test]
    fn matches_burn_max_pool() {
        let device = crate::backend::cpu_device();
        for (k, shape) in [(5, [2, 3, 9, 7]), (3, [1, 2, 4, 5]), (5, [1, 1, 2, 3]), (1, [1, 2, 3, 3])] {
            let x = Tensor::<4>::random(shape, Distribution::Normal(0.0, 1.0), &device);
            // All-negative values: padding must act as -inf, never as 0.
            let x = x.abs().neg() - 0.5;
            let p = k / 2;
            let pool = MaxPool2dConfig::new([k, k])
                .with_strides([1, 1])
                .with_padding(PaddingConfig2d::Explicit(p, p, p, p))
                .init();
            let want: Vec<f32> = pool.forward(x.clone()).into_data().try_to_vec().unwrap();
            let got = max_pool_same(x, k).unwrap_or_else(|_| panic!("refused"));
            assert_eq!(got.dims(), shape);
            let got: Vec<f32> = got.into_data().try_to_vec().unwrap();
            assert_eq!(got, want, "k {k}, shape {shape:?}");
        }
    }

    #[test]
    fn refuses_autodiff_and_even_kernels() {
        let device = crate::backend::cpu_device();
        assert!(max_pool_same(Tensor::<4>::zeros([1, 1, 4, 4], &device), 4).is_err());
        assert!(max_pool_same(Tensor::<4>::zeros([1, 1, 4, 4], &device.autodiff()), 5).is_err());
    }
}
