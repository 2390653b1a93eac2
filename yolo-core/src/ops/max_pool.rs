//! SPPF's max-pool (k x k, stride 1, padding k / 2) as one backend operation on the `flex` CPU
//! backend, for inference and training.
//!
//! Burn's `flex` max-pool (0.22.1) goes through its 3-D pool with indices, one scalar
//! comparison at a time: 7% of yolov8n's inference and ~2% of a training step for SPPF's three
//! small pools. A k x k window max is separable (the max over rows of the max over columns), so
//! [`max_pool_same`] does two passes of k comparisons per element, which vectorise, on all
//! cores. Padding acts as -inf, and a NaN in a window makes its maximum NaN, as in PyTorch's
//! and Burn's pools.
//!
//! The backward adds each output's gradient at the first maximum of its window in row-major
//! order (the last NaN if there is one, the window's first element if all of it is -inf), as
//! PyTorch's and Burn's pools do (their scan keeps a new maximum only when it is strictly
//! greater, or NaN). It recomputes those positions from the saved input, separably: the rows
//! pass keeps each row window's first maximal column, the columns pass the first row whose row
//! maximum is the window's maximum; the first row holding the maximum, at its first maximal
//! column, is the row-major first. No index tensor is kept between the passes.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::tensor::FloatTensor;
use burn::backend::{backend_extension, Autodiff, Backend, Dispatch, Flex};
use burn::tensor::{DType, Shape, Tensor};
use burn_flex::FlexTensor;

use crate::cpu::flex::{dims4, flex_primitive, flex_values, is_flex};
use crate::cpu::pool;

/// `k x k` max-pool, stride 1, padding `k / 2` (the output has the input's size); `k` odd.
/// On the `flex` backend with or without autodiff (the backward is [`MaxPoolOps`]'s).
///
/// Returns `Err(x)` (the input, untouched) when the fast path does not apply: not `flex`, not
/// f32, or an even `k`. The caller then runs Burn's pool.
///
/// # Shapes
/// - `x`: `[B, C, H, W]`; output: the same
pub fn max_pool_same(x: Tensor<4>, k: usize) -> Result<Tensor<4>, Tensor<4>> {
    if !is_flex(&x.device()) || x.dtype() != DType::F32 || k % 2 == 0 {
        return Err(x);
    }
    Ok(Tensor::from_dispatch(<Dispatch as MaxPoolOps>::max_pool_same(x.into_dispatch(), k)))
}

/// [`max_pool_same`] as a backend operation.
#[backend_extension(Flex, Autodiff)]
pub trait MaxPoolOps: Backend {
    /// `k x k` max-pool of an NCHW tensor, stride 1, padding `k / 2` (as -inf).
    fn max_pool_same(x: FloatTensor<Self>, k: usize) -> FloatTensor<Self>;
    /// Its gradient: `grad` (the output's) added at each window's first maximum of `x`.
    fn max_pool_same_backward(x: FloatTensor<Self>, grad: FloatTensor<Self>, k: usize) -> FloatTensor<Self>;
}

impl MaxPoolOps for Flex {
    fn max_pool_same(x: FlexTensor, k: usize) -> FlexTensor {
        let [b, c, h, w] = dims4(&x, "max_pool_same");
        let out = pool::max_pool_same(&flex_values(&x), [b, c, h, w], k);
        flex_primitive(out, Shape::new([b, c, h, w]))
    }

    fn max_pool_same_backward(x: FlexTensor, grad: FlexTensor, k: usize) -> FlexTensor {
        let [b, c, h, w] = dims4(&x, "max_pool_same_backward");
        assert_eq!(dims4(&grad, "max_pool_same_backward"), [b, c, h, w], "max_pool_same_backward: the gradient has the input's shape");
        let out = pool::max_pool_same_backward(&flex_values(&x), &flex_values(&grad), [b, c, h, w], k);
        flex_primitive(out, Shape::new([b, c, h, w]))
    }
}

impl<B: Backend + MaxPoolOps, C: CheckpointStrategy> MaxPoolOps for Autodiff<B, C> {
    fn max_pool_same(x: FloatTensor<Self>, k: usize) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct MaxPoolBackward;

        impl<B: Backend + MaxPoolOps> Backward<B, 1> for MaxPoolBackward {
            // The input (the window maxima's positions are found again from it) and k.
            type State = (FloatTensor<B>, usize);

            fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
                let [node] = ops.parents;
                let grad = grads.consume::<B>(&ops.node);
                if let Some(node) = node {
                    let (x, k) = ops.state;
                    grads.register::<B>(node.id, B::max_pool_same_backward(x, grad, k));
                }
            }
        }

        let (x, node) = x.into_parts();
        match MaxPoolBackward.prepare::<C>([node]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let out = B::max_pool_same(x.clone(), k);
                prep.finish((x, k), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::max_pool_same(x, k)),
        }
    }

    fn max_pool_same_backward(x: FloatTensor<Self>, grad: FloatTensor<Self>, k: usize) -> FloatTensor<Self> {
        // Only reached for a second derivative, which Burn's own max-pool does not offer either
        // (its autodiff `max_pool2d_with_indices_backward` panics the same way).
        let _ = (x, grad, k);
        panic!("Can't differentiate max_pool_same's backward (second derivative of a max-pool).")
    }
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

    /// Values and gradients on the autodiff backend against Burn's max-pool (what training
    /// ran before), with random values and with many ties (values on a coarse grid): each
    /// output's gradient must land on its window's row-major first maximum, as Burn's and
    /// PyTorch's pools put it.
    #[test]
    fn gradient_matches_burn_max_pool() {
        let device = crate::backend::cpu_device().autodiff();
        let cases = [(5, [2, 3, 9, 7], false), (5, [2, 3, 9, 7], true), (3, [1, 2, 4, 5], true), (5, [1, 1, 2, 3], false), (1, [1, 2, 3, 3], false), (5, [1, 2, 13, 11], true)];
        for (k, shape, coarse) in cases {
            let x0 = Tensor::<4>::random(shape, Distribution::Normal(0.0, 1.0), &device);
            let x0 = if coarse { (x0 * 1.5).round() } else { x0 }.into_data();
            let r = Tensor::<4>::random(shape, Distribution::Normal(0.0, 1.0), &device);
            let p = k / 2;
            let pool = MaxPool2dConfig::new([k, k]).with_strides([1, 1]).with_padding(PaddingConfig2d::Explicit(p, p, p, p)).init();
            let run = |ours: bool| {
                let x = Tensor::<4>::from_data(x0.clone(), &device).require_grad();
                let y = if ours { max_pool_same(x.clone(), k).unwrap_or_else(|_| panic!("refused")) } else { pool.forward(x.clone()) };
                // Twice in a row, as SPPF chains its pools.
                let y = if ours { max_pool_same(y, k).unwrap_or_else(|_| panic!("refused")) } else { pool.forward(y) };
                let g = (y.clone() * r.clone()).sum().backward();
                let v = |t: Tensor<4>| -> Vec<f32> { t.into_data().try_to_vec().unwrap() };
                (v(y), v(x.grad(&g).unwrap()))
            };
            let ((y_ours, g_ours), (y_burn, g_burn)) = (run(true), run(false));
            assert_eq!(y_ours, y_burn, "k {k}, shape {shape:?}");
            for (i, (a, e)) in g_ours.iter().zip(&g_burn).enumerate() {
                assert!((a - e).abs() <= 1e-5 * (1.0 + e.abs()), "k {k}, shape {shape:?}, coarse {coarse}, element {i}: {a} vs {e}");
            }
        }
    }

    /// Windows that are all -inf (the gradient goes to the window's first element) and a NaN
    /// (the maximum of every window holding it, and the gradient's target), against Burn's
    /// pool; an empty map.
    #[test]
    fn infinities_and_nan_match_burn_max_pool() {
        let device = crate::backend::cpu_device().autodiff();
        let (k, shape) = (3, [1, 2, 6, 7]);
        let mut v: Vec<f32> = (0..84).map(|i| ((i * 37) % 23) as f32 / 7.0 - 1.5).collect();
        for i in 0..21 {
            v[i] = f32::NEG_INFINITY; // rows 0-2 of channel 0
        }
        v[42 + 3 * 7 + 4] = f32::NAN; // channel 1, row 3, column 4
        let x0 = burn::tensor::TensorData::new(v, shape);
        let r = Tensor::<4>::random(shape, Distribution::Normal(0.0, 1.0), &device);
        let pool = MaxPool2dConfig::new([k, k]).with_strides([1, 1]).with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1)).init();
        let run = |ours: bool| {
            let x = Tensor::<4>::from_data(x0.clone(), &device).require_grad();
            let y = if ours { max_pool_same(x.clone(), k).unwrap_or_else(|_| panic!("refused")) } else { pool.forward(x.clone()) };
            let g = (y.clone() * r.clone()).sum().backward();
            let v = |t: Tensor<4>| -> Vec<f32> { t.into_data().try_to_vec().unwrap() };
            (v(y), v(x.grad(&g).unwrap()))
        };
        let ((y_ours, g_ours), (y_burn, g_burn)) = (run(true), run(false));
        let same = |a: f32, e: f32| (a.is_nan() && e.is_nan()) || a == e || (a - e).abs() <= 1e-5 * (1.0 + e.abs());
        for (i, (a, e)) in y_ours.iter().zip(&y_burn).enumerate() {
            assert!(same(*a, *e), "value {i}: {a} vs {e}");
        }
        for (i, (a, e)) in g_ours.iter().zip(&g_burn).enumerate() {
            assert!(same(*a, *e), "gradient {i}: {a} vs {e}");
        }
        let empty = Tensor::<4>::zeros([2, 3, 0, 5], &device);
        assert_eq!(max_pool_same(empty, 5).unwrap_or_else(|_| panic!("refused")).dims(), [2, 3, 0, 5]);
    }

    #[test]
    fn refuses_even_kernels_and_other_backends_only() {
        let device = crate::backend::cpu_device();
        assert!(max_pool_same(Tensor::<4>::zeros([1, 1, 4, 4], &device), 4).is_err());
        assert!(max_pool_same(Tensor::<4>::zeros([1, 1, 4, 4], &device.autodiff()), 5).is_ok());
    }
}
