//! The DFL expectation (softmax over each side's `reg_max` bins, dotted with `0..reg_max`) as
//! one backend operation on the CPU backend.
//!
//! Training decodes every anchor's box each step (for the assigner and the box losses). From
//! Burn ops that is a softmax (four passes with scalar `exp`), a product and a sum over the
//! bins, each with a temporary and its own backward: ~16 ms forward of a ~0.9 s yolov8n step
//! at 320, batch 8. [`DflOps::dfl_expectation`] reads the logits in place, bins strided by the
//! anchor count so that the loops run along contiguous anchors and vectorise, one pass forward
//! and one backward (`d logit_k = g · p_k · (k − E)`). [`dfl_expectation`] runs it on `flex` and
//! Burn's composition on other backends.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{unary, Backward, Ops, OpsKind};
use burn::backend::tensor::FloatTensor;
use burn::backend::{backend_extension, Autodiff, Backend, Dispatch, Flex, TensorMetadata};
use burn::tensor::activation::softmax;
use burn::tensor::{DType, Shape, Tensor, TensorData};
use burn_flex::FlexTensor;

#[cfg_attr(any(target_arch = "aarch64", target_feature = "fma"), allow(unused_imports))] // all their builds use `simd::fused`
use crate::cpu::simd::exp_f32;
use crate::cpu::flex::{flex_primitive, flex_values, is_flex, par_fill};
use crate::cpu::simd::multiversion;

/// DFL expectation: softmax over the `reg_max` bins of each side, dotted with `0..reg_max`.
///
/// # Shapes
/// - `boxes`: `[B, 4 * reg_max, A]`
/// - output: `[B, 4, A]` distances in grid units (left, top, right, bottom)
pub fn dfl_expectation(boxes: Tensor<3>, reg_max: usize) -> Tensor<3> {
    if is_flex(&boxes.device()) && boxes.dtype() == DType::F32 {
        // One fused op with its own backward ([`DflOps`]).
        return Tensor::from_dispatch(<Dispatch as DflOps>::dfl_expectation(boxes.into_dispatch(), reg_max));
    }
    dfl_expectation_burn(boxes, reg_max)
}

/// [`dfl_expectation`] from Burn ops (every backend other than `flex`).
pub(crate) fn dfl_expectation_burn(boxes: Tensor<3>, reg_max: usize) -> Tensor<3> {
    let [b, _, a] = boxes.dims();
    let device = boxes.device();
    let prob = softmax(boxes.reshape([b, 4, reg_max, a]), 2);
    let proj: Vec<f32> = (0..reg_max).map(|i| i as f32).collect();
    let proj = Tensor::<4>::from_data(TensorData::new(proj, [1, 1, reg_max, 1]), &device);
    (prob * proj).sum_dim(2).reshape([b, 4, a])
}

/// Anchors per inner block: the block's running max, sum and weighted sum stay in registers.
const LANES: usize = 64;

/// The DFL expectation as a backend operation.
#[backend_extension(Flex, Autodiff)]
pub trait DflOps: Backend {
    /// `E[b, s, a] = Σ_k k · softmax_k(x[b, s·reg_max + k, a])`.
    ///
    /// # Shapes
    /// - `x`: `[B, 4 · reg_max, A]`; output `[B, 4, A]`
    fn dfl_expectation(x: FloatTensor<Self>, reg_max: usize) -> FloatTensor<Self>;
}

/// The backward kernel of [`DflOps`], for backends that run it (here: `flex`).
pub trait DflGrads: Backend {
    /// `dx[b, s·R + k, a] = g[b, s, a] · p_k · (k − E)`, with `p` the bins' softmax.
    fn dfl_expectation_grad(x: FloatTensor<Self>, grad: FloatTensor<Self>, reg_max: usize) -> FloatTensor<Self>;
}

multiversion! {
    /// One side of one image: `x` holds `reg_max` rows of `a` logits; writes `E` per anchor
    /// into `out` (`[a]`), or with `grad` (`[a]`), `g · p_k · (k − E)` into `dx` (`[reg_max, a]`).
    fn dfl_side(x: &[f32], a: usize, reg_max: usize, out: &mut [f32], grad: Option<&[f32]>, dx: &mut [f32]) {
        let mut a0 = 0;
        while a0 < a {
            let n = LANES.min(a - a0);
            let mut m = [f32::MIN; LANES];
            for k in 0..reg_max {
                let row = &x[k * a + a0..k * a + a0 + n];
                for (m, &v) in m.iter_mut().zip(row) {
                    *m = m.max(v);
                }
            }
            let (mut s, mut e) = ([0f32; LANES], [0f32; LANES]);
            for k in 0..reg_max {
                let row = &x[k * a + a0..k * a + a0 + n];
                for j in 0..n {
                    let p = exp_f32(row[j] - m[j]);
                    s[j] += p;
                    e[j] += k as f32 * p;
                }
            }
            for j in 0..n {
                e[j] /= s[j];
            }
            match grad {
                None => out[a0..a0 + n].copy_from_slice(&e[..n]),
                Some(g) => {
                    let g = &g[a0..a0 + n];
                    for k in 0..reg_max {
                        let (row, drow) = (&x[k * a + a0..k * a + a0 + n], &mut dx[k * a + a0..k * a + a0 + n]);
                        for j in 0..n {
                            drow[j] = g[j] * exp_f32(row[j] - m[j]) / s[j] * (k as f32 - e[j]);
                        }
                    }
                }
            }
            a0 += n;
        }
    }
}

/// `(B, A)` of an `[B, 4·reg_max, A]` tensor.
fn dims(x: &FlexTensor, reg_max: usize) -> (usize, usize) {
    let s = x.shape();
    assert!(s.num_dims() == 3 && s[1] == 4 * reg_max, "dfl_expectation: expected [B, {}, A], got {:?}", 4 * reg_max, s);
    (s[0], s[2])
}

impl DflOps for Flex {
    fn dfl_expectation(x: FlexTensor, reg_max: usize) -> FlexTensor {
        let (b, a) = dims(&x, reg_max);
        let xv = flex_values(&x);
        let (out, _) = par_fill(b * 4 * a, a, |side, o| {
            dfl_side(&xv[side * reg_max * a..(side + 1) * reg_max * a], a, reg_max, o, None, &mut [])
        });
        flex_primitive(out, Shape::new([b, 4, a]))
    }
}

impl DflGrads for Flex {
    fn dfl_expectation_grad(x: FlexTensor, grad: FlexTensor, reg_max: usize) -> FlexTensor {
        let (b, a) = dims(&x, reg_max);
        let (xv, gv) = (flex_values(&x), flex_values(&grad));
        assert_eq!(gv.len(), b * 4 * a, "dfl_expectation_grad: gradient size");
        let (dx, _) = par_fill(xv.len(), reg_max * a, |side, d| {
            let x = &xv[side * reg_max * a..(side + 1) * reg_max * a];
            dfl_side(x, a, reg_max, &mut [], Some(&gv[side * a..(side + 1) * a]), d)
        });
        flex_primitive(dx, x.shape())
    }
}

impl<B: Backend + DflOps + DflGrads, C: CheckpointStrategy> DflOps for Autodiff<B, C> {
    fn dfl_expectation(x: FloatTensor<Self>, reg_max: usize) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct DflBackward;

        impl<B: Backend + DflGrads> Backward<B, 1> for DflBackward {
            // The logits and reg_max.
            type State = (FloatTensor<B>, usize);

            fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
                let (x, reg_max) = ops.state;
                unary::<B, _>(ops.parents, ops.node, grads, |grad| B::dfl_expectation_grad(x, grad, reg_max));
            }
        }

        let (x, node) = x.into_parts();
        match DflBackward.prepare::<C>([node]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => prep.finish((x.clone(), reg_max), B::dfl_expectation(x, reg_max)),
            OpsKind::UnTracked(prep) => prep.finish(B::dfl_expectation(x, reg_max)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{dfl_expectation, dfl_expectation_burn};
    use burn::tensor::{Distribution, Tensor};

    /// Value and gradient against Burn's softmax composition: logits with a wide range (the
    /// max subtraction matters), an anchor count that is not a multiple of the lane block,
    /// a weighted output so the incoming gradient varies, and a strided (transposed) input.
    #[test]
    fn matches_burn_composition() {
        let device = crate::backend::cpu_device().autodiff();
        let (b, r, a) = (2, 16, 150);
        let x0 = Tensor::<3>::random([b, a, 4 * r], Distribution::Normal(0.0, 6.0), &device).into_data();
        let w = Tensor::<3>::random([b, 4, a], Distribution::Default, &device);
        let run = |ours: bool| {
            let x = Tensor::<3>::from_data(x0.clone(), &device).require_grad();
            let xt = x.clone().swap_dims(1, 2);
            let e = if ours { dfl_expectation(xt, r) } else { dfl_expectation_burn(xt, r) };
            let g = (e.clone() * w.clone()).sum().backward();
            let v = |t: Tensor<3>| -> Vec<f32> { t.into_data().try_to_vec().unwrap() };
            (v(e), v(x.grad(&g).unwrap()))
        };
        let ((e_ours, g_ours), (e_burn, g_burn)) = (run(true), run(false));
        for (p, q) in e_ours.iter().zip(&e_burn) {
            assert!((p - q).abs() <= 2e-5, "expectation {p} vs {q}");
        }
        for (p, q) in g_ours.iter().zip(&g_burn) {
            assert!((p - q).abs() <= 2e-5, "gradient {p} vs {q}");
        }
    }
}
