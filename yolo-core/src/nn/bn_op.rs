//! BatchNorm in training mode as a backend operation with its own backward, on the `flex` CPU
//! backend.
//!
//! Burn 0.22.1's default `batch_norm_train` (which `flex` uses) computes the statistics on a
//! transposed copy of the input, and its backward makes two more transposed copies and a
//! dozen elementwise passes: ~10% of a yolov8n training step. Here the statistics are one
//! pass per channel over the NCHW planes, and the backward is two (sums, then `dX`), with the
//! same formula as Burn's `batch_norm_train_backward`:
//! `dX = γ·σ⁻¹·(dY − mean(dY) − x̂·mean(dY·x̂))`, `dγ = Σ dY·x̂`, `dβ = Σ dY`.
//! The running statistics are updated exactly as Burn's `BatchNorm::forward_train` does.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::tensor::FloatTensor;
use burn::backend::{backend_extension, Autodiff, Backend, Dispatch, Flex, TensorMetadata};
use burn::nn::BatchNorm;
use burn::tensor::{DType, Shape, Tensor, TensorData};
use burn_flex::FlexTensor;
use rayon::prelude::*;

use super::cpu_conv::{flex_primitive, flex_values};

/// `(x − mean)·γ/√(var + ε) + β` per channel, where `mean` and `var` are the batch's own
/// statistics ([`batch_stats`]): the gradient of `x` includes their dependence on `x`.
#[backend_extension(Flex, Autodiff)]
pub trait BatchNormOps: Backend {
    /// # Shapes
    /// - `x`: `[B, C, H, W]`; `gamma`, `beta`, `mean`, `var`: `[C]`; output: `[B, C, H, W]`
    fn batch_norm_train_apply(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        mean: FloatTensor<Self>,
        var: FloatTensor<Self>,
        epsilon: f64,
    ) -> FloatTensor<Self>;
}

/// The backward kernel of [`BatchNormOps`]: `[dX, dγ, dβ]`.
pub trait BatchNormGrads: Backend {
    fn batch_norm_train_grads(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        mean: FloatTensor<Self>,
        var: FloatTensor<Self>,
        epsilon: f64,
        dy: FloatTensor<Self>,
    ) -> [FloatTensor<Self>; 3];
}


fn from_vec(v: Vec<f32>, shape: Shape) -> FlexTensor {
    flex_primitive(v, shape)
}

/// `(batch, channels, pixels per plane)` of an NCHW tensor.
fn bcp(t: &FlexTensor) -> (usize, usize, usize) {
    let s = t.shape();
    let (b, c) = (s[0], s[1]);
    (b, c, s.num_elements() / (b * c).max(1))
}

/// Per-channel `γ/√(var + ε)`.
fn inv_std_scale(gamma: &[f32], var: &[f32], eps: f64) -> Vec<f32> {
    gamma.iter().zip(var).map(|(g, v)| g / (*v as f64 + eps).sqrt() as f32).collect()
}

impl BatchNormOps for Flex {
    fn batch_norm_train_apply(
        x: FlexTensor,
        gamma: FlexTensor,
        beta: FlexTensor,
        mean: FlexTensor,
        var: FlexTensor,
        epsilon: f64,
    ) -> FlexTensor {
        let (_, c, p) = bcp(&x);
        let (xv, g, bt, m, v) = (flex_values(&x), flex_values(&gamma), flex_values(&beta), flex_values(&mean), flex_values(&var));
        let scale = inv_std_scale(&g, &v, epsilon);
        let mut out = vec![0f32; xv.len()];
        out.par_chunks_mut(p).zip(xv.par_chunks(p)).enumerate().for_each(|(plane, (o, x))| {
            let ch = plane % c;
            let (s, mu, b) = (scale[ch], m[ch], bt[ch]);
            o.iter_mut().zip(x).for_each(|(o, x)| *o = (x - mu) * s + b);
        });
        from_vec(out, x.shape())
    }
}

impl BatchNormGrads for Flex {
    fn batch_norm_train_grads(
        x: FlexTensor,
        gamma: FlexTensor,
        mean: FlexTensor,
        var: FlexTensor,
        epsilon: f64,
        dy: FlexTensor,
    ) -> [FlexTensor; 3] {
        let (b, c, p) = bcp(&x);
        let (xv, g, m, v, dyv) = (flex_values(&x), flex_values(&gamma), flex_values(&mean), flex_values(&var), flex_values(&dy));
        let n = (b * p) as f64;
        // Per channel: (Σ dY, Σ dY·x̂) in f64, over the B planes of the channel.
        let sums: Vec<(f64, f64)> = (0..c)
            .into_par_iter()
            .map(|ch| {
                let inv = 1.0 / (v[ch] as f64 + epsilon).sqrt();
                let (mut s, mut sx) = (0f64, 0f64);
                for img in 0..b {
                    let o = (img * c + ch) * p;
                    let (x, d) = (&xv[o..o + p], &dyv[o..o + p]);
                    let (mut a, mut ax) = (0f32, 0f32);
                    for (x, d) in x.iter().zip(d) {
                        a += d;
                        ax += d * (x - m[ch]);
                    }
                    s += a as f64;
                    sx += ax as f64 * inv;
                }
                (s, sx)
            })
            .collect();
        let mut dx = vec![0f32; xv.len()];
        dx.par_chunks_mut(p).zip(xv.par_chunks(p).zip(dyv.par_chunks(p))).enumerate().for_each(
            |(plane, (o, (x, d)))| {
                let ch = plane % c;
                let inv = (1.0 / (v[ch] as f64 + epsilon).sqrt()) as f32;
                let k = g[ch] * inv;
                let (mean_dy, mean_dyx) = ((sums[ch].0 / n) as f32, (sums[ch].1 / n) as f32);
                let mu = m[ch];
                o.iter_mut().zip(x.iter().zip(d)).for_each(|(o, (x, d))| {
                    let xhat = (x - mu) * inv;
                    *o = k * (d - mean_dy - xhat * mean_dyx);
                });
            },
        );
        let dgamma: Vec<f32> = sums.iter().map(|s| s.1 as f32).collect();
        let dbeta: Vec<f32> = sums.iter().map(|s| s.0 as f32).collect();
        [from_vec(dx, x.shape()), from_vec(dgamma, Shape::new([c])), from_vec(dbeta, Shape::new([c]))]
    }
}

impl<B: Backend + BatchNormOps + BatchNormGrads, C: CheckpointStrategy> BatchNormOps for Autodiff<B, C> {
    fn batch_norm_train_apply(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        mean: FloatTensor<Self>,
        var: FloatTensor<Self>,
        epsilon: f64,
    ) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct BnBackward;

        impl<B: Backend + BatchNormGrads> Backward<B, 3> for BnBackward {
            // x, γ, the batch mean and variance, ε.
            type State = (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>, FloatTensor<B>, f64);

            fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
                let [node_x, node_g, node_b] = ops.parents;
                let dy = grads.consume::<B>(&ops.node);
                let (x, gamma, mean, var, eps) = ops.state;
                let [dx, dg, db] = B::batch_norm_train_grads(x, gamma, mean, var, eps, dy);
                for (node, grad) in [(node_x, dx), (node_g, dg), (node_b, db)] {
                    if let Some(node) = node {
                        grads.register::<B>(node.id, grad);
                    }
                }
            }
        }

        // The statistics are constants of this op (their dependence on x is in the backward).
        let (mean, var) = (mean.into_primitive(), var.into_primitive());
        let (x, nx) = x.into_parts();
        let (gamma, ng) = gamma.into_parts();
        let (beta, nb) = beta.into_parts();
        match BnBackward.prepare::<C>([nx, ng, nb]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let out = B::batch_norm_train_apply(x.clone(), gamma.clone(), beta, mean.clone(), var.clone(), epsilon);
                prep.finish((x, gamma, mean, var, epsilon), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::batch_norm_train_apply(x, gamma, beta, mean, var, epsilon)),
        }
    }
}

/// Per-channel mean and biased variance of an NCHW f32 buffer (f64 sums, two passes).
fn batch_stats(x: &[f32], b: usize, c: usize, p: usize) -> (Vec<f32>, Vec<f32>) {
    let n = (b * p) as f64;
    (0..c)
        .into_par_iter()
        .map(|ch| {
            let planes = || (0..b).map(|img| &x[(img * c + ch) * p..][..p]);
            let mean = planes().map(|pl| pl.iter().map(|v| *v as f64).sum::<f64>()).sum::<f64>() / n;
            let var = planes().map(|pl| pl.iter().map(|v| (*v as f64 - mean).powi(2)).sum::<f64>()).sum::<f64>() / n;
            (mean as f32, var as f32)
        })
        .unzip()
}

/// `bn.forward(x)` in training mode (autodiff device, layer not frozen) on the CPU backend,
/// through [`BatchNormOps`]: normalised with the batch statistics, running statistics updated
/// as Burn's `BatchNorm` does (momentum blend of the batch mean and biased variance). `Err(x)`
/// when it does not apply (another backend, inference mode, not f32, not 4-D NCHW), for the
/// caller to run `bn.forward`.
///
/// # Shapes
/// - `x`: `[B, C, H, W]`; output: the same
pub fn batch_norm_train(bn: &BatchNorm, x: Tensor<4>) -> Result<Tensor<4>, Tensor<4>> {
    let device = x.device();
    if !device.is_autodiff() || !super::cpu_conv::is_flex(&device) || !bn.training.is_enabled() || x.dtype() != DType::F32 {
        return Err(x);
    }
    let [b, c, h, w] = x.dims();
    if bn.gamma.dims() != [c] {
        return Err(x);
    }
    let Ok(plain) = x.clone().detach().inner().try_into_primitive::<Flex>() else {
        return Err(x);
    };
    let (mean, var) = batch_stats(&flex_values(&plain), b, c, h * w);
    drop(plain);
    let stat = |v: Vec<f32>| Tensor::<1>::from_data(TensorData::new(v, [c]), &device);
    let (mean, var) = (stat(mean), stat(var));
    let y = Tensor::<4>::from_dispatch(<Dispatch as BatchNormOps>::batch_norm_train_apply(
        x.into_dispatch(),
        bn.gamma.val().into_dispatch(),
        bn.beta.val().into_dispatch(),
        mean.clone().into_dispatch(),
        var.clone().into_dispatch(),
        bn.epsilon,
    ));
    let running_mean = bn.running_mean.value_sync().to_device(&device);
    let running_var = bn.running_var.value_sync().to_device(&device);
    let running_mean = running_mean.mul_scalar(1.0 - bn.momentum).add(mean.mul_scalar(bn.momentum));
    let running_var = running_var.mul_scalar(1.0 - bn.momentum).add(var.mul_scalar(bn.momentum));
    bn.running_mean.update(running_mean.detach());
    bn.running_var.update(running_var.detach());
    Ok(y)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::BatchNormConfig;
    use burn::tensor::Distribution;

    #[test]
    fn inference_devices_are_refused() {
        let device = crate::backend::cpu_device();
        let bn = BatchNormConfig::new(2).init(&device);
        assert!(batch_norm_train(&bn, Tensor::<4>::zeros([1, 2, 3, 3], &device)).is_err());
    }

    #[test]
    fn matches_burn_batch_norm_in_training() {
        let device = crate::backend::cpu_device().autodiff();
        let (b, c, h, w) = (3, 5, 7, 6);
        // Non-trivial affine parameters. A fresh module per run: clones share running state.
        let gamma = Tensor::<1>::random([c], Distribution::Uniform(0.5, 1.5), &device).into_data();
        let beta = Tensor::<1>::random([c], Distribution::Normal(0.0, 1.0), &device).into_data();
        let make = || {
            let mut bn = BatchNormConfig::new(c).with_epsilon(1e-3).with_momentum(0.03).init(&device);
            bn.gamma = burn::module::Param::from_tensor(Tensor::from_data(gamma.clone(), &device));
            bn.beta = burn::module::Param::from_tensor(Tensor::from_data(beta.clone(), &device));
            bn
        };
        let x0 = Tensor::<4>::random([b, c, h, w], Distribution::Normal(2.0, 3.0), &device).into_data();
        let r = Tensor::<4>::random([b, c, h, w], Distribution::Normal(0.0, 1.0), &device).into_data();
        let run = |ours: bool| {
            let bn = make();
            let x = Tensor::<4>::from_data(x0.clone(), &device).require_grad();
            let y = if ours { batch_norm_train(&bn, x.clone()).unwrap_or_else(|_| panic!("refused")) } else { bn.forward(x.clone()) };
            let g = (y.clone() * Tensor::<4>::from_data(r.clone(), &device)).sum().backward();
            let v4 = |t: Tensor<4>| -> Vec<f32> { t.into_data().try_to_vec().unwrap() };
            let v1 = |t: Tensor<1>| -> Vec<f32> { t.into_data().try_to_vec().unwrap() };
            (
                v4(y),
                v4(x.grad(&g).unwrap()),
                v1(bn.gamma.grad(&g).unwrap()),
                v1(bn.beta.grad(&g).unwrap()),
                v1(bn.running_mean.value_sync()),
                v1(bn.running_var.value_sync()),
            )
        };
        let ours = run(true);
        let burn = run(false);
        let close = |what: &str, a: &[f32], e: &[f32]| {
            assert_eq!(a.len(), e.len());
            for (i, (a, e)) in a.iter().zip(e).enumerate() {
                assert!((a - e).abs() <= 1e-4 * e.abs().max(1.0), "{what}[{i}]: {a} vs {e}");
            }
        };
        close("output", &ours.0, &burn.0);
        close("dx", &ours.1, &burn.1);
        close("dgamma", &ours.2, &burn.2);
        close("dbeta", &ours.3, &burn.3);
        close("running_mean", &ours.4, &burn.4);
        close("running_var", &ours.5, &burn.5);
    }
}
