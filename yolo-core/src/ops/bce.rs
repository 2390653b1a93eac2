//! Binary cross-entropy with logits, summed, as one backend operation on the CPU backend.
//!
//! The v8 class loss is `Σ BCEWithLogits(x, y)` over `[B, anchors, classes]` (1.3M values for
//! yolov8n at 320, batch 8). Composed from Burn ops (`(1 − y)·x − log_sigmoid(x)`, then a sum)
//! it is six passes with scalar `expf`/`log1pf` and a temporary each, forward and again
//! backward: ~35 ms of a ~0.9 s train step. [`bce_with_logits_sum`] is one vectorised pass
//! forward and one backward on `flex`; other backends keep the composition.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::tensor::FloatTensor;
use burn::backend::{backend_extension, Autodiff, Backend, Dispatch, Flex, TensorMetadata};
use burn::tensor::activation::log_sigmoid;
use burn::tensor::{DType, Shape, Tensor};
use burn_flex::FlexTensor;
use rayon::prelude::*;

#[cfg_attr(any(target_arch = "aarch64", target_feature = "fma"), allow(unused_imports))] // all their builds use `simd::fused`
use crate::cpu::simd::{log1p_exp_neg_abs, sigmoid_f32};
use crate::cpu::flex::{flex_primitive, flex_values, is_flex, par_fill};
use crate::cpu::simd::multiversion;

/// Elements per parallel chunk; the chunks' sums are added in order, so the result does not
/// depend on the thread count.
const CHUNK: usize = 1 << 14;

/// `Σ (1 − y)·x − log_sigmoid(x)` over all elements: PyTorch's `BCEWithLogitsLoss(reduction =
/// "sum")`, computed stably as `max(x, 0) − x·y + ln(1 + exp(−|x|))`.
///
/// On the CPU backend (with or without autodiff) one pass forward and one backward
/// (`dx = (sigmoid(x) − y)·g`, `dy = −x·g`); elsewhere Burn's composition. On the CPU
/// backend each of 16 f32 lanes sums its share of a chunk (~1,000 values), and lanes and
/// chunks are added in f64.
///
/// # Shapes
/// - `x` (logits), `y` (targets in `[0, 1]`): the same shape; output `[1]`
pub fn bce_with_logits_sum<const D: usize>(x: Tensor<D>, y: Tensor<D>) -> Tensor<1> {
    assert_eq!(x.dims(), y.dims(), "bce_with_logits_sum: logits and targets differ in shape");
    if !is_flex(&x.device()) || x.dtype() != DType::F32 || y.dtype() != DType::F32 {
        return ((y.neg() + 1.0) * x.clone() - log_sigmoid(x)).sum();
    }
    Tensor::from_dispatch(<Dispatch as BceOps>::bce_with_logits_sum(x.into_dispatch(), y.into_dispatch()))
}

/// [`bce_with_logits_sum`] as a backend operation.
#[backend_extension(Flex, Autodiff)]
pub trait BceOps: Backend {
    /// `Σ BCEWithLogits(x, y)`, shape `[1]`.
    fn bce_with_logits_sum(x: FloatTensor<Self>, y: FloatTensor<Self>) -> FloatTensor<Self>;
}

/// The backward kernel of [`BceOps`], for backends that run it (here: `flex`).
pub trait BceGrads: Backend {
    /// `(dx, dy) = ((sigmoid(x) − y)·g, −x·g)` for the scalar output gradient `g` (`[1]`), each
    /// only when asked for.
    fn bce_with_logits_sum_grads(
        x: FloatTensor<Self>,
        y: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        need: [bool; 2],
    ) -> [Option<FloatTensor<Self>>; 2];
}

multiversion! {
    /// `Σ max(x, 0) − x·y + ln(1 + exp(−|x|))` over one chunk: 16 f32 lanes, then f64.
    fn bce_sum_chunk(x: &[f32], y: &[f32]) -> f64 {
        let f = |x: f32, y: f32| x.max(0.0) - x * y + log1p_exp_neg_abs(x);
        let mut lanes = [0f32; 16];
        let (xc, yc) = (x.chunks_exact(16), y.chunks_exact(16));
        let (xr, yr) = (xc.remainder(), yc.remainder());
        for (xs, ys) in xc.zip(yc) {
            for l in 0..16 {
                lanes[l] += f(xs[l], ys[l]);
            }
        }
        let tail: f64 = xr.iter().zip(yr).map(|(&x, &y)| f(x, y) as f64).sum();
        lanes.iter().map(|&v| v as f64).sum::<f64>() + tail
    }
}

multiversion! {
    /// `out[i] = (sigmoid(x[i]) − y[i])·g`.
    fn bce_grad_chunk(out: &mut [f32], x: &[f32], y: &[f32], g: f32) {
        for ((o, &x), &y) in out.iter_mut().zip(x).zip(y) {
            *o = (sigmoid_f32(x) - y) * g;
        }
    }
}

/// The single value of a `[1]` flex tensor.
fn scalar(t: &FlexTensor) -> f32 {
    let v = flex_values(t);
    assert_eq!(v.len(), 1, "expected one value, got {}", v.len());
    v[0]
}

impl BceOps for Flex {
    fn bce_with_logits_sum(x: FlexTensor, y: FlexTensor) -> FlexTensor {
        let (xv, yv) = (flex_values(&x), flex_values(&y));
        assert_eq!(xv.len(), yv.len(), "bce_with_logits_sum: logits and targets differ in size");
        let partials: Vec<f64> = xv.par_chunks(CHUNK).zip(yv.par_chunks(CHUNK)).map(|(x, y)| bce_sum_chunk(x, y)).collect();
        flex_primitive(vec![partials.iter().sum::<f64>() as f32], Shape::new([1]))
    }
}

impl BceGrads for Flex {
    fn bce_with_logits_sum_grads(
        x: FlexTensor,
        y: FlexTensor,
        grad: FlexTensor,
        [need_x, need_y]: [bool; 2],
    ) -> [Option<FlexTensor>; 2] {
        let g = scalar(&grad);
        let (xv, yv) = (flex_values(&x), flex_values(&y));
        let dx = need_x.then(|| {
            let (out, _) = par_fill(xv.len(), CHUNK, |i, o| {
                let r = i * CHUNK..i * CHUNK + o.len();
                bce_grad_chunk(o, &xv[r.clone()], &yv[r], g)
            });
            flex_primitive(out, x.shape())
        });
        let dy = need_y.then(|| flex_primitive(xv.iter().map(|&x| -x * g).collect(), y.shape()));
        [dx, dy]
    }
}

impl<B: Backend + BceOps + BceGrads, C: CheckpointStrategy> BceOps for Autodiff<B, C> {
    fn bce_with_logits_sum(x: FloatTensor<Self>, y: FloatTensor<Self>) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct BceBackward;

        impl<B: Backend + BceGrads> Backward<B, 2> for BceBackward {
            // Logits and targets, kept for the backward pass.
            type State = (FloatTensor<B>, FloatTensor<B>);

            fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
                let [node_x, node_y] = ops.parents;
                let g = grads.consume::<B>(&ops.node);
                let (x, y) = ops.state;
                let [dx, dy] = B::bce_with_logits_sum_grads(x, y, g, [node_x.is_some(), node_y.is_some()]);
                if let (Some(node), Some(dx)) = (node_x, dx) {
                    grads.register::<B>(node.id, dx);
                }
                if let (Some(node), Some(dy)) = (node_y, dy) {
                    grads.register::<B>(node.id, dy);
                }
            }
        }

        let (x, node_x) = x.into_parts();
        let (y, node_y) = y.into_parts();
        match BceBackward.prepare::<C>([node_x, node_y]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let out = B::bce_with_logits_sum(x.clone(), y.clone());
                prep.finish((x, y), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::bce_with_logits_sum(x, y)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Distribution, TensorData};

    /// Value and both gradients against Burn's composition, on logits from -30 to 30 (both
    /// tails of the softplus), soft targets, a size that is not a multiple of the lane or
    /// chunk count, and a transposed (strided) view of the logits.
    #[test]
    fn matches_burn_composition() {
        let device = crate::backend::cpu_device().autodiff();
        let (rows, cols) = (37, 1001);
        let xs: Vec<f32> = (0..rows * cols).map(|i| ((i * 7919) % 6001) as f32 / 100.0 - 30.0).collect();
        let ys = Tensor::<2>::random([cols, rows], Distribution::Default, &device).into_data();
        let w = Tensor::<2>::random([cols, rows], Distribution::Default, &device);
        let run = |ours: bool| {
            let x = Tensor::<2>::from_data(TensorData::new(xs.clone(), [rows, cols]), &device).require_grad();
            let y = Tensor::<2>::from_data(ys.clone(), &device).require_grad();
            // Scaled so the incoming gradient is not 1.
            let loss = if ours {
                bce_with_logits_sum(x.clone().transpose(), y.clone())
            } else {
                let xt = x.clone().transpose();
                ((y.clone().neg() + 1.0) * xt.clone() - log_sigmoid(xt)).sum()
            } * 0.37
                + (y.clone() * w.clone()).sum() * 0.0;
            let g = loss.backward();
            let v = |t: Tensor<2>| -> Vec<f32> { t.into_data().try_to_vec().unwrap() };
            (loss.into_scalar::<f32>(), v(x.grad(&g).unwrap()), v(y.grad(&g).unwrap()))
        };
        let (l_ours, dx_ours, dy_ours) = run(true);
        let (l_burn, dx_burn, dy_burn) = run(false);
        assert!((l_ours - l_burn).abs() <= 1e-5 * l_burn.abs(), "loss {l_ours} vs {l_burn}");
        for (a, b) in dx_ours.iter().zip(&dx_burn) {
            assert!((a - b).abs() <= 1e-6, "dx {a} vs {b}");
        }
        for (a, b) in dy_ours.iter().zip(&dy_burn) {
            assert!((a - b).abs() <= 1e-5 * b.abs().max(1.0), "dy {a} vs {b}");
        }
    }

    /// The softplus tail against f64 over the range the loss sees, including where `1 + t`
    /// rounds to 1.
    #[test]
    fn softplus_tail_is_accurate() {
        // Both forms: split, and fused (what the AVX2 and AVX-512 builds run).
        for tail in [log1p_exp_neg_abs as fn(f32) -> f32, crate::cpu::simd::fused::log1p_exp_neg_abs] {
            let mut x = -100.0f32;
            while x < 100.0 {
                let want = (-(x.abs() as f64)).exp().ln_1p();
                let got = tail(x) as f64;
                assert!((got - want).abs() <= 4e-7 * want.max(1e-30), "ln(1 + exp(-|{x}|)) = {got}, want {want}");
                x += 0.0173;
            }
        }
    }
}
