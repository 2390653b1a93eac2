//! SiLU (`x * sigmoid(x)`) and sigmoid as backend operations with their own backward.
//!
//! Burn's `silu` is two ops (a sigmoid with scalar `expf`, then a multiply): on the CPU
//! backend it was a quarter of yolov8n's inference time. On `flex`, with or without
//! autodiff, [`silu`] and [`sigmoid`] are backend operations ([`SiluOps`], [`SigmoidOps`])
//! that map the values once, on all cores, with an exp that vectorises
//! ([`crate::cpu::simd`]; the result stays within float rounding of the exact function),
//! and have their own one-pass backward. GPU devices use Burn's ops.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{unary, Backward, Ops, OpsKind};
use burn::backend::ops::{ActivationOps, FloatTensorOps};
use burn::backend::tensor::FloatTensor;
use burn::backend::{backend_extension, Autodiff, Backend, Dispatch, Flex, TensorMetadata};
use burn::tensor::activation;
use burn::tensor::{DType, Tensor};
use burn_flex::FlexTensor;
use rayon::prelude::*;

use crate::cpu::flex::{self, flex_primitive as flex_from_vec};
use crate::cpu::simd::{multiversion, sigmoid_slice, silu_grad_slice, silu_slice};

/// `x * sigmoid(x)`.
///
/// On the CPU backend this is one op ([`SiluOps`]), with or without autodiff: one vectorised
/// pass forward, and one backward (`dy · s · (1 + x · (1 − s))`, `s = sigmoid(x)`), where
/// Burn's composition of sigmoid and multiply takes three scalar-`exp` passes and five
/// temporaries. Other backends use Burn's `activation::silu`.
///
/// # Shapes
/// - `x`: any; output: the same
pub fn silu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    if !flex::is_flex(&x.device()) {
        return activation::silu(x);
    }
    Tensor::from_dispatch(<Dispatch as SiluOps>::silu(x.into_dispatch()))
}

/// SiLU as a backend operation with its own backward, for the CPU backend (and its autodiff
/// wrapper), so that training does not pay for Burn's sigmoid-times-input composition.
#[backend_extension(Flex, Autodiff)]
pub trait SiluOps: Backend {
    /// `x * sigmoid(x)`.
    fn silu(x: FloatTensor<Self>) -> FloatTensor<Self>;
    /// `grad * silu'(x)`, with `silu'(x) = s · (1 + x · (1 − s))`, `s = sigmoid(x)`.
    fn silu_backward(x: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self>;
}

/// The contiguous f32 values of a flex tensor (copied only if it is a strided view), or `None`
/// for another dtype.
fn flex_values(t: &FlexTensor) -> Option<std::borrow::Cow<'_, [f32]>> {
    (t.dtype() == DType::F32).then(|| flex::flex_values(t))
}

impl SiluOps for Flex {
    fn silu(x: FlexTensor) -> FlexTensor {
        let Some(v) = flex_values(&x) else {
            // Not f32: Burn's composition.
            return Flex::float_mul(x.clone(), Flex::sigmoid(x));
        };
        let mut out = v.into_owned();
        out.par_chunks_mut(1 << 14).for_each(silu_slice);
        flex_from_vec(out, x.shape())
    }

    fn silu_backward(x: FlexTensor, grad: FlexTensor) -> FlexTensor {
        let (Some(xv), Some(gv)) = (flex_values(&x), flex_values(&grad)) else {
            let s = Flex::sigmoid(x.clone());
            let one_minus_s = Flex::float_add_scalar(Flex::float_neg(s.clone()), 1.0.into());
            let inner = Flex::float_add_scalar(Flex::float_mul(x, one_minus_s), 1.0.into());
            return Flex::float_mul(grad, Flex::float_mul(s, inner));
        };
        assert_eq!(xv.len(), gv.len(), "silu_backward: input and gradient sizes differ");
        let mut out = gv.into_owned();
        out.par_chunks_mut(1 << 14)
            .zip(xv.par_chunks(1 << 14))
            .for_each(|(g, x)| silu_grad_slice(g, x));
        flex_from_vec(out, grad.shape())
    }
}

impl<B: Backend + SiluOps, C: CheckpointStrategy> SiluOps for Autodiff<B, C> {
    fn silu(x: FloatTensor<Self>) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct SiluBackward;

        impl<B: Backend + SiluOps> Backward<B, 1> for SiluBackward {
            // The input, kept for the backward pass (Burn's own sigmoid keeps it too).
            type State = FloatTensor<B>;

            fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
                let x = ops.state;
                unary::<B, _>(ops.parents, ops.node, grads, |grad| B::silu_backward(x, grad));
            }
        }

        let (x, node) = x.into_parts();
        match SiluBackward.prepare::<C>([node]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => prep.finish(x.clone(), B::silu(x)),
            OpsKind::UnTracked(prep) => prep.finish(B::silu(x)),
        }
    }

    fn silu_backward(x: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        // Only reached for a second derivative: Burn's differentiable ops.
        let s = Self::sigmoid(x.clone());
        let one_minus_s = Self::float_add_scalar(Self::float_neg(s.clone()), 1.0.into());
        let inner = Self::float_add_scalar(Self::float_mul(x, one_minus_s), 1.0.into());
        Self::float_mul(grad, Self::float_mul(s, inner))
    }
}

/// `1 / (1 + exp(-x))`.
///
/// On the CPU backend one vectorised pass ([`SigmoidOps`]; backward `g · s · (1 − s)` from
/// the kept output), where Burn's runs a scalar `exp` per value; other backends use Burn's
/// `activation::sigmoid`.
///
/// # Shapes
/// - `x`: any; output: the same
pub fn sigmoid<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    if !flex::is_flex(&x.device()) || x.dtype() != DType::F32 {
        return activation::sigmoid(x);
    }
    Tensor::from_dispatch(<Dispatch as SigmoidOps>::sigmoid_fast(x.into_dispatch()))
}

/// Sigmoid as a backend operation with its own backward, for the CPU backend.
#[backend_extension(Flex, Autodiff)]
pub trait SigmoidOps: Backend {
    /// `1 / (1 + exp(-x))`.
    fn sigmoid_fast(x: FloatTensor<Self>) -> FloatTensor<Self>;
    /// `grad · s · (1 − s)` for the sigmoid's output `s`.
    fn sigmoid_fast_backward(s: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self>;
}

multiversion! {
    /// `g[i] *= s[i] · (1 − s[i])` in place (the sigmoid backward from its output).
    fn sigmoid_grad_slice(g: &mut [f32], s: &[f32]) {
        for (g, &s) in g.iter_mut().zip(s) {
            *g *= s * (1.0 - s);
        }
    }
}

impl SigmoidOps for Flex {
    fn sigmoid_fast(x: FlexTensor) -> FlexTensor {
        let v = flex::flex_values(&x);
        let (out, _) = flex::par_fill(v.len(), 1 << 14, |i, o| {
            o.copy_from_slice(&v[i << 14..(i << 14) + o.len()]);
            sigmoid_slice(o)
        });
        flex_from_vec(out, x.shape())
    }

    fn sigmoid_fast_backward(s: FlexTensor, grad: FlexTensor) -> FlexTensor {
        let sv = flex::flex_values(&s);
        let mut out = flex::flex_values(&grad).into_owned();
        assert_eq!(sv.len(), out.len(), "sigmoid backward: output and gradient sizes differ");
        out.par_chunks_mut(1 << 14).zip(sv.par_chunks(1 << 14)).for_each(|(g, s)| sigmoid_grad_slice(g, s));
        flex_from_vec(out, grad.shape())
    }
}

impl<B: Backend + SigmoidOps, C: CheckpointStrategy> SigmoidOps for Autodiff<B, C> {
    fn sigmoid_fast(x: FloatTensor<Self>) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct SigmoidBackward;

        impl<B: Backend + SigmoidOps> Backward<B, 1> for SigmoidBackward {
            // The output.
            type State = FloatTensor<B>;

            fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
                let s = ops.state;
                unary::<B, _>(ops.parents, ops.node, grads, |grad| B::sigmoid_fast_backward(s, grad));
            }
        }

        let (x, node) = x.into_parts();
        match SigmoidBackward.prepare::<C>([node]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let s = B::sigmoid_fast(x);
                prep.finish(s.clone(), s)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::sigmoid_fast(x)),
        }
    }

    fn sigmoid_fast_backward(s: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        // Only reached for a second derivative: Burn's differentiable ops.
        let one_minus_s = Self::float_add_scalar(Self::float_neg(s.clone()), 1.0.into());
        Self::float_mul(grad, Self::float_mul(s, one_minus_s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::simd::silu_f32;

    #[test]
    fn silu_matches_the_definition() {
        for &x in &[-100.0f32, -20.0, -3.5, -1.0, -1e-3, 0.0, 1e-3, 0.5, 2.0, 7.0, 30.0, 100.0] {
            let want = (x as f64) / (1.0 + (-(x as f64)).exp());
            let got = silu_f32(x) as f64;
            assert!((got - want).abs() <= 1e-6 * want.abs().max(1.0), "silu({x}) = {got}, want {want}");
        }
        let device = crate::backend::cpu_device();
        let t = Tensor::<2>::from_data(burn::tensor::TensorData::new(vec![-2.0f32, -0.5, 0.0, 0.5, 2.0, 9.0], [2, 3]), &device);
        let fast: Vec<f32> = silu(t.clone()).into_data().try_to_vec().unwrap();
        let burn: Vec<f32> = activation::silu(t).into_data().try_to_vec().unwrap();
        for (a, b) in fast.iter().zip(&burn) {
            assert!((a - b).abs() <= 1e-6, "{a} vs {b}");
        }
    }

    #[test]
    fn sigmoid_matches_burn_with_gradient() {
        let device = crate::backend::cpu_device().autodiff();
        let data = Tensor::<2>::random([5, 333], burn::tensor::Distribution::Normal(0.0, 5.0), &device).into_data();
        let w = Tensor::<2>::random([333, 5], burn::tensor::Distribution::Default, &device);
        let run = |f: &dyn Fn(Tensor<2>) -> Tensor<2>| {
            let x = Tensor::<2>::from_data(data.clone(), &device).require_grad();
            let y = f(x.clone().transpose());
            let g = (y.clone() * w.clone()).sum().backward();
            let gx: Vec<f32> = x.grad(&g).unwrap().into_data().try_to_vec().unwrap();
            (y.into_data().try_to_vec::<f32>().unwrap(), gx)
        };
        let (y_ours, g_ours) = run(&|x| sigmoid(x));
        let (y_burn, g_burn) = run(&|x| activation::sigmoid(x));
        for (a, b) in y_ours.iter().zip(&y_burn).chain(g_ours.iter().zip(&g_burn)) {
            assert!((a - b).abs() <= 1e-6, "{a} vs {b}");
        }
    }

    #[test]
    fn silu_gradient_matches_burn() {
        let device = crate::backend::cpu_device().autodiff();
        let data = Tensor::<2>::random([7, 300], burn::tensor::Distribution::Normal(0.0, 4.0), &device).into_data();
        // Weights on the output so the incoming gradient is not all ones; a transposed view so
        // the strided-input path runs too.
        let w = Tensor::<2>::random([300, 7], burn::tensor::Distribution::Default, &device);
        let run = |f: &dyn Fn(Tensor<2>) -> Tensor<2>| {
            let x = Tensor::<2>::from_data(data.clone(), &device).require_grad();
            let y = f(x.clone().transpose());
            let loss = (y.clone() * w.clone()).sum();
            let g = loss.backward();
            let gx: Vec<f32> = x.grad(&g).unwrap().into_data().try_to_vec().unwrap();
            let y: Vec<f32> = y.into_data().try_to_vec().unwrap();
            (y, gx)
        };
        let (y_ours, g_ours) = run(&|x| silu(x));
        let (y_burn, g_burn) = run(&|x| activation::silu(x));
        for (a, b) in y_ours.iter().zip(&y_burn) {
            assert!((a - b).abs() <= 1e-5 * b.abs().max(1.0), "forward {a} vs {b}");
        }
        for (a, b) in g_ours.iter().zip(&g_burn) {
            assert!((a - b).abs() <= 1e-5 * b.abs().max(1.0), "gradient {a} vs {b}");
        }
    }
}
