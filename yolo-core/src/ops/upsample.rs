//! Nearest-neighbour 2x upsampling as one backend operation on the CPU backend.
//!
//! Burn writes the upsample as a broadcast (`reshape`, `expand`, `reshape`): its forward copies
//! the broadcast view element by element through a generic strided iterator, and its backward
//! sums the expanded axes through copies and integer reshapes, on one thread. Here the forward
//! is one pass (each value written to its 2x2 block) and the backward one pass (each 2x2 block
//! summed), over planes on all cores.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{unary, Backward, Ops};
use burn::backend::ops::FloatTensorOps;
use burn::backend::tensor::FloatTensor;
use burn::backend::{backend_extension, Autodiff, Backend, Dispatch, Flex, TensorMetadata};
use burn::tensor::{DType, Shape, Tensor};
use burn_flex::FlexTensor;

use crate::cpu::flex::{dims4, flex_primitive, flex_values, is_flex, par_fill};

/// `[B, C, 2H, 2W]` from `[B, C, H, W]`, each pixel repeated over a 2x2 block, on the CPU
/// backend (with or without autodiff); `Err(x)` elsewhere or for another dtype.
///
/// # Shapes
/// - `x`: `[B, C, H, W]`; output `[B, C, 2H, 2W]`
pub fn upsample2x(x: Tensor<4>) -> Result<Tensor<4>, Tensor<4>> {
    if !is_flex(&x.device()) || x.dtype() != DType::F32 {
        return Err(x);
    }
    Ok(Tensor::from_dispatch(<Dispatch as UpsampleOps>::upsample2x(x.into_dispatch())))
}

/// [`upsample2x`] as a backend operation.
#[backend_extension(Flex, Autodiff)]
pub trait UpsampleOps: Backend {
    /// Nearest 2x upsampling of an NCHW tensor.
    fn upsample2x(x: FloatTensor<Self>) -> FloatTensor<Self>;
    /// Its gradient: the sum of each 2x2 block of `grad` (`[B, C, 2H, 2W]` -> `[B, C, H, W]`).
    fn upsample2x_backward(grad: FloatTensor<Self>) -> FloatTensor<Self>;
}

impl UpsampleOps for Flex {
    fn upsample2x(x: FlexTensor) -> FlexTensor {
        let [b, c, h, w] = dims4(&x, "upsample2x");
        let src = flex_values(&x);
        let (out, _) = par_fill(b * c * 4 * h * w, 4 * h * w, |i, dst| {
            let plane = &src[i * h * w..(i + 1) * h * w];
            for (rows, row) in dst.chunks_exact_mut(4 * w).zip(plane.chunks_exact(w)) {
                let (top, bottom) = rows.split_at_mut(2 * w);
                for (pair, v) in top.chunks_exact_mut(2).zip(row) {
                    pair[0] = *v;
                    pair[1] = *v;
                }
                bottom.copy_from_slice(top);
            }
        });
        flex_primitive(out, Shape::new([b, c, 2 * h, 2 * w]))
    }

    fn upsample2x_backward(grad: FlexTensor) -> FlexTensor {
        let [b, c, h2, w2] = dims4(&grad, "upsample2x");
        let (h, w) = (h2 / 2, w2 / 2);
        let g = flex_values(&grad);
        let (out, _) = par_fill(b * c * h * w, h * w, |i, dst| {
            let plane = &g[i * h2 * w2..(i + 1) * h2 * w2];
            for (row, rows) in dst.chunks_exact_mut(w).zip(plane.chunks_exact(2 * w2)) {
                let (top, bottom) = rows.split_at(w2);
                for (j, o) in row.iter_mut().enumerate() {
                    *o = top[2 * j] + top[2 * j + 1] + bottom[2 * j] + bottom[2 * j + 1];
                }
            }
        });
        flex_primitive(out, Shape::new([b, c, h, w]))
    }
}

impl<B: Backend + UpsampleOps, C: CheckpointStrategy> UpsampleOps for Autodiff<B, C> {
    fn upsample2x(x: FloatTensor<Self>) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct UpsampleBackward;

        impl<B: Backend + UpsampleOps> Backward<B, 1> for UpsampleBackward {
            type State = ();

            fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
                unary::<B, _>(ops.parents, ops.node, grads, |grad| B::upsample2x_backward(grad));
            }
        }

        let (x, node) = x.into_parts();
        UpsampleBackward.prepare::<C>([node]).compute_bound().stateless(B::upsample2x(x))
    }

    fn upsample2x_backward(grad: FloatTensor<Self>) -> FloatTensor<Self> {
        // Only reached for a second derivative: the sum of each 2x2 block from Burn ops.
        let [b, c, h2, w2] = {
            let s = grad.shape();
            [s[0], s[1], s[2], s[3]]
        };
        let t = Self::float_reshape(grad, Shape::new([b, c, h2 / 2, 2, w2 / 2, 2]));
        let t = Self::float_sum_dim(Self::float_sum_dim(t, 5), 3);
        Self::float_reshape(t, Shape::new([b, c, h2 / 2, w2 / 2]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Distribution;

    /// Value and gradient against Burn's broadcast (what every other backend runs).
    #[test]
    fn matches_burn_broadcast() {
        let device = crate::backend::cpu_device().autodiff();
        let (b, c, h, w) = (2, 3, 5, 7);
        let x0 = Tensor::<4>::random([b, c, h, w], Distribution::Normal(0.0, 1.0), &device).into_data();
        let r = Tensor::<4>::random([b, c, 2 * h, 2 * w], Distribution::Normal(0.0, 1.0), &device);
        let run = |ours: bool| {
            let x = Tensor::<4>::from_data(x0.clone(), &device).require_grad();
            let y = if ours {
                upsample2x(x.clone()).unwrap_or_else(|_| panic!("refused"))
            } else {
                x.clone().reshape([b, c, h, 1, w, 1]).expand([b, c, h, 2, w, 2]).reshape([b, c, 2 * h, 2 * w])
            };
            let g = (y.clone() * r.clone()).sum().backward();
            let v = |t: Tensor<4>| -> Vec<f32> { t.into_data().try_to_vec().unwrap() };
            (v(y), v(x.grad(&g).unwrap()))
        };
        let ((y_ours, g_ours), (y_burn, g_burn)) = (run(true), run(false));
        assert_eq!(y_ours, y_burn);
        for (a, e) in g_ours.iter().zip(&g_burn) {
            assert!((a - e).abs() <= 1e-5, "{a} vs {e}");
        }
    }
}
