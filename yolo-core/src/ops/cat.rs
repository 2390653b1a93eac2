//! Concatenation of 2 to 4 tensors as one backend operation on the CPU backend.
//!
//! The training step concatenates every C2f's branches before its `cv2`, the neck's
//! upsampled map with the backbone's, and the head's levels before the loss: `flex`'s `cat`
//! copies them on one thread (~1.6% of a 320 px, batch-8 step's CPU time, while the other
//! core waited). Here the copy runs on all cores, one task per (row, part), where a row is
//! everything before the axis (an image, for channels). The backward hands each part its
//! slice of the gradient as Burn's does (a view; the convs read such views in parallel).
//! Inference does not come here: its convs read a concatenation's parts in place
//! (`Conv::forward_cat`). Two to four parts cover yolov8n/s (C2f's `1 + n` parts with n ≤ 2,
//! the neck's two, the head's three levels); the deeper C2f of m/l/x (up to 7 parts) take
//! Burn's `cat`.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::tensor::FloatTensor;
use burn::backend::{backend_extension, Autodiff, Backend, Dispatch, Flex, TensorMetadata};
use burn::tensor::{DType, Slice, Tensor};
use burn_flex::FlexTensor;
use rayon::prelude::*;

use crate::cpu::flex::{flex_primitive, flex_values, is_flex, OutPtr};

/// `Tensor::cat(xs, dim)`, on all cores on the CPU backend for 2 to 4 f32 parts (with or
/// without autodiff); Burn's `cat` otherwise.
///
/// # Shapes
/// - `xs`: the same shape but along `dim`; output: their sizes along `dim` summed
pub fn cat<const D: usize>(xs: Vec<Tensor<D>>, dim: usize) -> Tensor<D> {
    let ours = (2..=4).contains(&xs.len())
        && dim < D
        && is_flex(&xs[0].device())
        && xs.iter().all(|x| x.device() == xs[0].device())
        && xs.iter().all(|x| x.dtype() == DType::F32)
        && xs.iter().all(|x| {
            let (a, b) = (x.dims(), xs[0].dims());
            (0..D).all(|d| d == dim || a[d] == b[d])
        });
    if !ours {
        return Tensor::cat(xs, dim);
    }
    let n = xs.len();
    let mut it = xs.into_iter().map(|x| x.into_dispatch());
    let mut next = || it.next().expect("2 to 4 parts");
    Tensor::from_dispatch(match n {
        2 => <Dispatch as CatOps>::cat2(next(), next(), dim),
        3 => <Dispatch as CatOps>::cat3(next(), next(), next(), dim),
        _ => <Dispatch as CatOps>::cat4(next(), next(), next(), next(), dim),
    })
}

/// [`cat`] as a backend operation, one method per number of parts.
#[backend_extension(Flex, Autodiff)]
pub trait CatOps: Backend {
    fn cat2(a: FloatTensor<Self>, b: FloatTensor<Self>, dim: usize) -> FloatTensor<Self>;
    fn cat3(a: FloatTensor<Self>, b: FloatTensor<Self>, c: FloatTensor<Self>, dim: usize) -> FloatTensor<Self>;
    fn cat4(a: FloatTensor<Self>, b: FloatTensor<Self>, c: FloatTensor<Self>, d: FloatTensor<Self>, dim: usize) -> FloatTensor<Self>;
}

/// The parts concatenated along `dim`: each part's rows (`[outer, size_i · inner]`) copied
/// side by side, one task per (row, part).
fn cat_flex(parts: &[FlexTensor], dim: usize) -> FlexTensor {
    let shape = parts[0].shape();
    let outer: usize = (0..dim).map(|d| shape[d]).product();
    let inner: usize = (dim + 1..shape.num_dims()).map(|d| shape[d]).product();
    let values: Vec<_> = parts.iter().map(flex_values).collect();
    let rows: Vec<usize> = parts.iter().map(|p| p.shape()[dim] * inner).collect();
    let row: usize = rows.iter().sum();
    let offsets: Vec<usize> = rows.iter().scan(0, |o, r| Some(std::mem::replace(o, *o + r))).collect();
    let len = outer * row;
    let mut out: Vec<f32> = Vec::with_capacity(len);
    let dst = OutPtr(out.as_mut_ptr());
    (0..outer * parts.len()).into_par_iter().for_each(|task| {
        let dst = &dst;
        let (o, i) = (task / parts.len(), task % parts.len());
        let src = &values[i][o * rows[i]..(o + 1) * rows[i]];
        // SAFETY: row o's values offsets[i]..offsets[i] + rows[i], inside `out` (o < outer),
        // written by this task only.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst.0.add(o * row + offsets[i]), rows[i]) };
    });
    // SAFETY: the tasks wrote every (row, part): `outer · row` values.
    unsafe { out.set_len(len) };
    let mut dims = shape.clone();
    dims[dim] = parts.iter().map(|p| p.shape()[dim]).sum();
    flex_primitive(out, dims)
}

impl CatOps for Flex {
    fn cat2(a: FlexTensor, b: FlexTensor, dim: usize) -> FlexTensor {
        cat_flex(&[a, b], dim)
    }

    fn cat3(a: FlexTensor, b: FlexTensor, c: FlexTensor, dim: usize) -> FlexTensor {
        cat_flex(&[a, b, c], dim)
    }

    fn cat4(a: FlexTensor, b: FlexTensor, c: FlexTensor, d: FlexTensor, dim: usize) -> FlexTensor {
        cat_flex(&[a, b, c, d], dim)
    }
}

/// The autodiff wrapper of an `N`-part concatenation `forward` on the inner backend: each
/// part's gradient is its slice of the output's (a view), as in Burn's `cat`.
fn cat_autodiff<B: Backend, C: CheckpointStrategy, const N: usize>(
    xs: [FloatTensor<Autodiff<B, C>>; N],
    dim: usize,
    forward: impl FnOnce([FloatTensor<B>; N]) -> FloatTensor<B>,
) -> FloatTensor<Autodiff<B, C>> {
    #[derive(Debug)]
    struct CatBackward;

    impl<B: Backend, const N: usize> Backward<B, N> for CatBackward {
        // Each part's size along the axis, and the axis.
        type State = ([usize; N], usize);

        fn backward(self, ops: Ops<Self::State, N>, grads: &mut Gradients, _: &mut Checkpointer) {
            let grad = grads.consume::<B>(&ops.node);
            let shape = grad.shape();
            let (sizes, dim) = ops.state;
            let mut start = 0;
            for (node, size) in ops.parents.into_iter().zip(sizes) {
                if let Some(node) = node {
                    let slices: Vec<Slice> = (0..shape.num_dims())
                        .map(|d| if d == dim { Slice::new(start as isize, Some((start + size) as isize), 1) } else { Slice::new(0, Some(shape[d] as isize), 1) })
                        .collect();
                    grads.register::<B>(node.id, B::float_slice(grad.clone(), &slices));
                }
                start += size;
            }
        }
    }

    let sizes: [usize; N] = std::array::from_fn(|i| xs[i].shape()[dim]);
    let parts = xs.map(|x| x.into_parts());
    let (prims, nodes): (Vec<_>, Vec<_>) = parts.into_iter().unzip();
    let prims: [FloatTensor<B>; N] = prims.try_into().unwrap_or_else(|_| unreachable!("N parts"));
    let nodes: [_; N] = nodes.try_into().unwrap_or_else(|_| unreachable!("N parts"));
    match <CatBackward as Backward<B, N>>::prepare::<C>(CatBackward, nodes).compute_bound().stateful() {
        OpsKind::Tracked(prep) => prep.finish((sizes, dim), forward(prims)),
        OpsKind::UnTracked(prep) => prep.finish(forward(prims)),
    }
}

impl<B: Backend + CatOps, C: CheckpointStrategy> CatOps for Autodiff<B, C> {
    fn cat2(a: FloatTensor<Self>, b: FloatTensor<Self>, dim: usize) -> FloatTensor<Self> {
        cat_autodiff::<B, C, 2>([a, b], dim, |[a, b]| B::cat2(a, b, dim))
    }

    fn cat3(a: FloatTensor<Self>, b: FloatTensor<Self>, c: FloatTensor<Self>, dim: usize) -> FloatTensor<Self> {
        cat_autodiff::<B, C, 3>([a, b, c], dim, |[a, b, c]| B::cat3(a, b, c, dim))
    }

    fn cat4(a: FloatTensor<Self>, b: FloatTensor<Self>, c: FloatTensor<Self>, d: FloatTensor<Self>, dim: usize) -> FloatTensor<Self> {
        cat_autodiff::<B, C, 4>([a, b, c, d], dim, |[a, b, c, d]| B::cat4(a, b, c, d, dim))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Distribution;

    /// Values and gradients against Burn's `cat`, along channels (with a strided part: a
    /// channel slice) and along the last axis, for 2, 3 and 4 parts.
    #[test]
    fn matches_burn_cat() {
        let device = crate::backend::cpu_device().autodiff();
        for (dim, n) in [(1, 2), (1, 3), (1, 4), (2, 3), (0, 2)] {
            let inputs: Vec<_> = (0..n)
                .map(|i| {
                    let mut dims = [2, 3, 5, 4];
                    dims[dim] = i + 1;
                    Tensor::<4>::random(dims, Distribution::Normal(0.0, 1.0), &device).into_data()
                })
                .collect();
            let run = |ours: bool| {
                let leaves: Vec<Tensor<4>> = inputs.iter().map(|d| Tensor::<4>::from_data(d.clone(), &device).require_grad()).collect();
                // The first part as a slice of a wider tensor (a strided view).
                let wide = Tensor::cat(vec![leaves[0].clone(), leaves[0].clone()], 3);
                let mut xs = leaves.clone();
                xs[0] = wide.narrow(3, 0, 4);
                let y = if ours { cat(xs, dim) } else { Tensor::cat(xs, dim) };
                let v = |t: Tensor<4>| -> Vec<f32> { t.into_data().try_to_vec().unwrap() };
                let yv = v(y.clone());
                // The same weights in both runs, by position.
                let w = Tensor::<1, burn::tensor::Int>::arange(0..y.shape().num_elements() as i64, &device).float().reshape(y.dims()).div_scalar(97.0).sin();
                let g = (y * w).sum().backward();
                (yv, leaves.iter().map(|l| v(l.grad(&g).unwrap())).collect::<Vec<_>>())
            };
            let ((y_ours, g_ours), (y_burn, g_burn)) = (run(true), run(false));
            assert_eq!(y_ours, y_burn, "values, dim {dim}, {n} parts");
            assert_eq!(g_ours, g_burn, "gradients, dim {dim}, {n} parts");
        }
    }
}
