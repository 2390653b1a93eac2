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
//!
//! With `silu`, the op is `silu(bn(x))` (YOLO's Conv block after its conv): one pass writes the
//! activation, and the backward turns `dY` into the BatchNorm output's gradient
//! (`dY·silu'(z)`, `z` recomputed from `x`) inside its first pass. That saves the SiLU op's
//! own pass and its kept input each way. Per-plane sums run in 16 f32 lanes per block of
//! [`SUM_BLOCK`] values, added up in f64, so that they vectorise.

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

#[cfg_attr(any(target_arch = "aarch64", target_feature = "fma"), allow(unused_imports))] // all their builds use `simd::fused`
use crate::cpu::simd::{sigmoid_f32, silu_f32};
use crate::cpu::flex::{flex_primitive, flex_values, is_flex, par_init};
use crate::cpu::simd::multiversion;
use std::mem::MaybeUninit;

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
        silu: bool,
    ) -> FloatTensor<Self>;
}

/// The backward kernel of [`BatchNormOps`]: `[dX, dγ, dβ]`.
pub trait BatchNormGrads: Backend {
    #[allow(clippy::too_many_arguments)]
    fn batch_norm_train_grads(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        mean: FloatTensor<Self>,
        var: FloatTensor<Self>,
        epsilon: f64,
        silu: bool,
        dy: FloatTensor<Self>,
    ) -> [FloatTensor<Self>; 3];
}

/// Values per f32 block of the per-plane sums (16 lanes of 64 values), before they are
/// added up in f64.
const SUM_BLOCK: usize = 1024;

multiversion! {
    /// `Σ x` over one plane, or `Σ (x − mean)²` with `mean` given.
    fn plane_sums(x: &[f32], mean: Option<f32>) -> f64 {
        let mut total = 0f64;
        for block in x.chunks(SUM_BLOCK) {
            let mut lanes = [0f32; 16];
            let chunks = block.chunks_exact(16);
            let rest = chunks.remainder();
            match mean {
                None => {
                    for c in chunks {
                        for l in 0..16 {
                            lanes[l] += c[l];
                        }
                    }
                    lanes[0] += rest.iter().sum::<f32>();
                }
                Some(m) => {
                    for c in chunks {
                        for l in 0..16 {
                            lanes[l] += (c[l] - m) * (c[l] - m);
                        }
                    }
                    lanes[0] += rest.iter().map(|v| (v - m) * (v - m)).sum::<f32>();
                }
            }
            total += lanes.iter().map(|&v| v as f64).sum::<f64>();
        }
        total
    }
}

multiversion! {
    /// One plane of the backward's first pass without activation: `(Σ dy, Σ dy·(x − mean))`.
    fn plane_grad_sums(x: &[f32], dy: &[f32], mean: f32) -> (f64, f64) {
        let (mut s, mut sx) = (0f64, 0f64);
        for (xb, db) in x.chunks(SUM_BLOCK).zip(dy.chunks(SUM_BLOCK)) {
            let (mut a, mut ax) = ([0f32; 16], [0f32; 16]);
            let (xc, dc) = (xb.chunks_exact(16), db.chunks_exact(16));
            let (xr, dr) = (xc.remainder(), dc.remainder());
            for (xs, ds) in xc.zip(dc) {
                for l in 0..16 {
                    a[l] += ds[l];
                    ax[l] += ds[l] * (xs[l] - mean);
                }
            }
            for (x, d) in xr.iter().zip(dr) {
                a[0] += d;
                ax[0] += d * (x - mean);
            }
            s += a.iter().map(|&v| v as f64).sum::<f64>();
            sx += ax.iter().map(|&v| v as f64).sum::<f64>();
        }
        (s, sx)
    }
}

multiversion! {
    /// One plane of the backward's first pass through SiLU: `d = dy·silu'(z)` with
    /// `z = (x − mean)·scale + beta` (the BatchNorm output, computed as the forward does),
    /// written to `d`; returns `(Σ d, Σ d·(x − mean))`.
    fn plane_silu_grad_sums(x: &[f32], dy: &[f32], d: &mut [MaybeUninit<f32>], mean: f32, scale: f32, beta: f32) -> (f64, f64) {
        let grad = |dy: f32, x: f32| {
            let z = (x - mean) * scale + beta;
            let sg = sigmoid_f32(z);
            dy * sg * (1.0 + z * (1.0 - sg))
        };
        let (mut s, mut sx) = (0f64, 0f64);
        for ((xb, yb), db) in x.chunks(SUM_BLOCK).zip(dy.chunks(SUM_BLOCK)).zip(d.chunks_mut(SUM_BLOCK)) {
            let (mut a, mut ax) = ([0f32; 16], [0f32; 16]);
            let full = xb.len() / 16 * 16;
            for ((xs, ys), ds) in xb[..full].chunks_exact(16).zip(yb[..full].chunks_exact(16)).zip(db[..full].chunks_exact_mut(16)) {
                for l in 0..16 {
                    let v = grad(ys[l], xs[l]);
                    ds[l].write(v);
                    a[l] += v;
                    ax[l] += v * (xs[l] - mean);
                }
            }
            for i in full..xb.len() {
                let v = grad(yb[i], xb[i]);
                db[i].write(v);
                a[0] += v;
                ax[0] += v * (xb[i] - mean);
            }
            s += a.iter().map(|&v| v as f64).sum::<f64>();
            sx += ax.iter().map(|&v| v as f64).sum::<f64>();
        }
        (s, sx)
    }
}

multiversion! {
    /// `o = (x − mean)·scale + shift`, then SiLU with `silu` (every element of `o` written).
    fn apply_plane(o: &mut [MaybeUninit<f32>], x: &[f32], mean: f32, scale: f32, shift: f32, silu: bool) {
        if silu {
            o.iter_mut().zip(x).for_each(|(o, x)| {
                o.write(silu_f32((x - mean) * scale + shift));
            });
        } else {
            o.iter_mut().zip(x).for_each(|(o, x)| {
                o.write((x - mean) * scale + shift);
            });
        }
    }
}

multiversion! {
    /// The backward's second pass over one plane: `dX = k·(d − mean_d − x̂·mean_dx̂)` with
    /// `x̂ = (x − mean)·inv`, `d` read from `o` (in place).
    fn dx_plane(o: &mut [f32], x: &[f32], coef: [f32; 5]) {
        o.iter_mut().zip(x).for_each(|(o, &x)| *o = dx_value(coef, x, *o));
    }
}

multiversion! {
    /// [`dx_plane`] with `d` read from `dy`, into `o` (every element written).
    fn dx_plane_from(o: &mut [MaybeUninit<f32>], x: &[f32], dy: &[f32], coef: [f32; 5]) {
        o.iter_mut().zip(x.iter().zip(dy)).for_each(|(o, (&x, &d))| {
            o.write(dx_value(coef, x, d));
        });
    }
}

/// One value of the backward's second pass: `k·(d − mean_d − (x − mean)·inv·mean_dx̂)`.
#[inline(always)]
fn dx_value([k, mean, inv, mean_d, mean_dx]: [f32; 5], x: f32, d: f32) -> f32 {
    k * (d - mean_d - (x - mean) * inv * mean_dx)
}

/// AVX-512 versions of the two passes through SiLU (the forward's [`apply_plane`], the
/// backward's [`plane_silu_grad_sums`]) with the conv epilogue's `exp` (`simd::fma`: a degree-6
/// polynomial after a one-step reduction, in explicit FMAs). The loops over the generic `exp`
/// are bound by its dependency chains: the epilogue's SiLU takes 0.27 ns a value where a
/// loop over [`crate::cpu::simd::fused::silu_f32`] took 0.52 (Emerald Rapids, one core). The same
/// sums in 16 lanes per [`SUM_BLOCK`], added up in f64; a partial last vector is masked.
#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::SUM_BLOCK;
    use crate::cpu::simd::fma::{lanes16 as lanes, one_plus_exp_neg16};
    use std::arch::x86_64::*;
    use std::mem::MaybeUninit;

    /// The 16 lanes added up in f64, in lane order.
    #[inline(always)]
    unsafe fn sum_f64(v: __m512) -> f64 {
        let mut a = [0f32; 16];
        // SAFETY: `a` holds 16 floats.
        unsafe { _mm512_storeu_ps(a.as_mut_ptr(), v) };
        a.iter().map(|&v| v as f64).sum()
    }

    /// `o = silu((x − mean)·scale + shift)` ([`super::apply_plane`] with SiLU).
    ///
    /// # Safety
    /// AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn apply_silu(o: &mut [MaybeUninit<f32>], x: &[f32], mean: f32, scale: f32, shift: f32) {
        let n = x.len();
        assert_eq!(o.len(), n, "apply_silu: lengths differ");
        let (xp, op) = (x.as_ptr(), o.as_mut_ptr() as *mut f32);
        // SAFETY (whole body): loads and stores of lanes i..min(i + 16, n) only.
        unsafe {
            let (m, sc, sh) = (_mm512_set1_ps(mean), _mm512_set1_ps(scale), _mm512_set1_ps(shift));
            let mut i = 0;
            while i < n {
                let k = lanes(i, n);
                let z = _mm512_fmadd_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, xp.add(i)), m), sc, sh);
                _mm512_mask_storeu_ps(op.add(i), k, _mm512_div_ps(z, one_plus_exp_neg16(z)));
                i += 16;
            }
        }
    }

    /// `d = dy·silu'(z)`, `z = (x − mean)·scale + beta`, written to `d`; returns
    /// `(Σ d, Σ d·(x − mean))` ([`super::plane_silu_grad_sums`]).
    ///
    /// # Safety
    /// AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn silu_grad_sums(x: &[f32], dy: &[f32], d: &mut [MaybeUninit<f32>], mean: f32, scale: f32, beta: f32) -> (f64, f64) {
        let n = x.len();
        assert!(dy.len() == n && d.len() == n, "silu_grad_sums: lengths differ");
        let (xp, yp, dp) = (x.as_ptr(), dy.as_ptr(), d.as_mut_ptr() as *mut f32);
        let (mut s, mut sx) = (0f64, 0f64);
        // SAFETY (whole body): loads and stores of lanes i..min(i + 16, n) only; masked-off
        // lanes are zeroed before they are summed.
        unsafe {
            let (m, sc, b, one) = (_mm512_set1_ps(mean), _mm512_set1_ps(scale), _mm512_set1_ps(beta), _mm512_set1_ps(1.0));
            let mut start = 0;
            while start < n {
                let end = (start + SUM_BLOCK).min(n);
                let (mut a, mut ax) = (_mm512_setzero_ps(), _mm512_setzero_ps());
                let mut i = start;
                while i < end {
                    let k = lanes(i, end);
                    let xm = _mm512_sub_ps(_mm512_maskz_loadu_ps(k, xp.add(i)), m);
                    let z = _mm512_fmadd_ps(xm, sc, b);
                    let sg = _mm512_div_ps(one, one_plus_exp_neg16(z));
                    // dy · s · (1 + z · (1 − s))
                    let v = _mm512_mul_ps(_mm512_mul_ps(_mm512_maskz_loadu_ps(k, yp.add(i)), sg), _mm512_fmadd_ps(z, _mm512_sub_ps(one, sg), one));
                    // Masked-off lanes to 0 whatever z is there (an infinite z would give NaN).
                    let v = _mm512_maskz_mov_ps(k, v);
                    _mm512_mask_storeu_ps(dp.add(i), k, v);
                    a = _mm512_add_ps(a, v);
                    ax = _mm512_fmadd_ps(v, xm, ax);
                    i += 16;
                }
                s += sum_f64(a);
                sx += sum_f64(ax);
                start = end;
            }
        }
        (s, sx)
    }
}

/// Whether the AVX-512 kernels of [`x86`] run here.
#[cfg(target_arch = "x86_64")]
#[inline]
fn avx512() -> bool {
    crate::cpu::simd::fma::available512()
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
        silu: bool,
    ) -> FlexTensor {
        let (_, c, p) = bcp(&x);
        let (xv, g, bt, m, v) = (flex_values(&x), flex_values(&gamma), flex_values(&beta), flex_values(&mean), flex_values(&var));
        let scale = inv_std_scale(&g, &v, epsilon);
        // SAFETY: `apply_plane` and `x86::apply_silu` write every element of each plane, and
        // the latter runs only where the CPU has AVX-512F.
        let (out, _) = unsafe {
            par_init(xv.len(), p, |plane, o| {
                let ch = plane % c;
                let x = &xv[plane * p..(plane + 1) * p];
                #[cfg(target_arch = "x86_64")]
                if silu && avx512() {
                    return x86::apply_silu(o, x, m[ch], scale[ch], bt[ch]);
                }
                apply_plane(o, x, m[ch], scale[ch], bt[ch], silu);
            })
        };
        flex_primitive(out, x.shape())
    }
}

impl BatchNormGrads for Flex {
    fn batch_norm_train_grads(
        x: FlexTensor,
        gamma: FlexTensor,
        beta: FlexTensor,
        mean: FlexTensor,
        var: FlexTensor,
        epsilon: f64,
        silu: bool,
        dy: FlexTensor,
    ) -> [FlexTensor; 3] {
        let (b, c, p) = bcp(&x);
        if b * c * p == 0 {
            let zeros = |n: usize, shape: Shape| flex_primitive(vec![0f32; n], shape);
            return [zeros(0, x.shape()), zeros(c, Shape::new([c])), zeros(c, Shape::new([c]))];
        }
        let (xv, g, bt, m, v, dyv) =
            (flex_values(&x), flex_values(&gamma), flex_values(&beta), flex_values(&mean), flex_values(&var), flex_values(&dy));
        let n = (b * p) as f64;
        let scale = inv_std_scale(&g, &v, epsilon);
        // Per plane, in parallel: (Σ d, Σ d·(x − mean)), with d = dY or, with SiLU, the
        // BatchNorm output's gradient dY·silu'(z), written into `dx` (turned into dX in place
        // by the second pass). Planes are summed per channel in image order.
        let plane_sums = |plane: usize, d: &mut [MaybeUninit<f32>]| {
            let ch = plane % c;
            let (x, dy) = (&xv[plane * p..(plane + 1) * p], &dyv[plane * p..(plane + 1) * p]);
            if silu {
                #[cfg(target_arch = "x86_64")]
                if avx512() {
                    // SAFETY: the CPU has AVX-512F (checked just above).
                    return unsafe { x86::silu_grad_sums(x, dy, d, m[ch], scale[ch], bt[ch]) };
                }
                plane_silu_grad_sums(x, dy, d, m[ch], scale[ch], bt[ch])
            } else {
                plane_grad_sums(x, dy, m[ch])
            }
        };
        let (mut dx, per_plane) = if silu {
            // SAFETY: `plane_silu_grad_sums` writes every element of each plane.
            unsafe { par_init(xv.len(), p, plane_sums) }
        } else {
            (Vec::new(), (0..b * c).into_par_iter().map(|plane| plane_sums(plane, &mut [])).collect())
        };
        // Per-channel `1/√(var + ε)`, in f64 for the sums and as f32 in the dX coefficients.
        let inv: Vec<f64> = v.iter().map(|&v| 1.0 / (v as f64 + epsilon).sqrt()).collect();
        let sums: Vec<(f64, f64)> = (0..c)
            .map(|ch| {
                let (s, sx) = (0..b).map(|img| per_plane[img * c + ch]).fold((0f64, 0f64), |a, t| (a.0 + t.0, a.1 + t.1));
                (s, sx * inv[ch])
            })
            .collect();
        let coef = |plane: usize| {
            let ch = plane % c;
            let inv = inv[ch] as f32;
            [g[ch] * inv, m[ch], inv, (sums[ch].0 / n) as f32, (sums[ch].1 / n) as f32]
        };
        if silu {
            dx.par_chunks_mut(p).enumerate().for_each(|(plane, o)| dx_plane(o, &xv[plane * p..(plane + 1) * p], coef(plane)));
        } else {
            // SAFETY: `dx_plane_from` writes every element of each plane.
            dx = unsafe {
                par_init(xv.len(), p, |plane, o| {
                    let r = plane * p..(plane + 1) * p;
                    dx_plane_from(o, &xv[r.clone()], &dyv[r], coef(plane))
                })
            }
            .0;
        }
        let dgamma: Vec<f32> = sums.iter().map(|s| s.1 as f32).collect();
        let dbeta: Vec<f32> = sums.iter().map(|s| s.0 as f32).collect();
        [flex_primitive(dx, x.shape()), flex_primitive(dgamma, Shape::new([c])), flex_primitive(dbeta, Shape::new([c]))]
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
        silu: bool,
    ) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct BnBackward;

        impl<B: Backend + BatchNormGrads> Backward<B, 3> for BnBackward {
            // x, γ, β, the batch mean and variance, ε, SiLU.
            type State = (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>, FloatTensor<B>, FloatTensor<B>, f64, bool);

            fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
                let [node_x, node_g, node_b] = ops.parents;
                let dy = grads.consume::<B>(&ops.node);
                let (x, gamma, beta, mean, var, eps, silu) = ops.state;
                let [dx, dg, db] = B::batch_norm_train_grads(x, gamma, beta, mean, var, eps, silu, dy);
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
                let out =
                    B::batch_norm_train_apply(x.clone(), gamma.clone(), beta.clone(), mean.clone(), var.clone(), epsilon, silu);
                prep.finish((x, gamma, beta, mean, var, epsilon, silu), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::batch_norm_train_apply(x, gamma, beta, mean, var, epsilon, silu)),
        }
    }
}

/// Per-channel mean and biased variance of an NCHW f32 buffer (two passes, [`plane_sums`]).
fn batch_stats(x: &[f32], b: usize, c: usize, p: usize) -> (Vec<f32>, Vec<f32>) {
    let n = (b * p) as f64;
    (0..c)
        .into_par_iter()
        .map(|ch| {
            let planes = || (0..b).map(|img| &x[(img * c + ch) * p..][..p]);
            let mean = (planes().map(|pl| plane_sums(pl, None)).sum::<f64>() / n) as f32;
            let var = planes().map(|pl| plane_sums(pl, Some(mean))).sum::<f64>() / n;
            (mean, var as f32)
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
    batch_norm_train_act(bn, x, false)
}

/// `silu(bn.forward(x))` in training mode as one op, like [`batch_norm_train`] (same
/// conditions, same running-statistics update).
///
/// # Shapes
/// - `x`: `[B, C, H, W]`; output: the same
pub fn batch_norm_silu_train(bn: &BatchNorm, x: Tensor<4>) -> Result<Tensor<4>, Tensor<4>> {
    batch_norm_train_act(bn, x, true)
}

fn batch_norm_train_act(bn: &BatchNorm, x: Tensor<4>, silu: bool) -> Result<Tensor<4>, Tensor<4>> {
    let device = x.device();
    if !device.is_autodiff() || !is_flex(&device) || !bn.training.is_enabled() || x.dtype() != DType::F32 {
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
        silu,
    ));
    update_running_stats(bn, mean, var);
    Ok(y)
}

/// Blends the batch `mean` and biased `var` (`[C]`) into `bn`'s running statistics with its
/// momentum, as Burn's `BatchNorm` does, and folds the update in ([`fold_running_stats`]).
fn update_running_stats(bn: &BatchNorm, mean: Tensor<1>, var: Tensor<1>) {
    let device = mean.device();
    let running_mean = bn.running_mean.value_sync().to_device(&device);
    let running_var = bn.running_var.value_sync().to_device(&device);
    let running_mean = running_mean.mul_scalar(1.0 - bn.momentum).add(mean.detach().mul_scalar(bn.momentum));
    let running_var = running_var.mul_scalar(1.0 - bn.momentum).add(var.detach().mul_scalar(bn.momentum));
    bn.running_mean.update(running_mean.detach());
    bn.running_var.update(running_var.detach());
    fold_running_stats(bn);
}

/// `silu(bn.forward(x))` on the devices and dtypes [`batch_norm_silu_train`] does not run on
/// (the GPU backends), its running statistics' update folded in as ours is. In training
/// mode as a composition of tensor ops whose reductions run along the contiguous axes
/// first ([`batch_stats_composed`]); otherwise Burn's `BatchNorm`.
pub fn burn_batch_norm_silu(bn: &BatchNorm, x: Tensor<4>) -> Tensor<4> {
    if !(x.device().is_autodiff() && bn.training.is_enabled()) {
        let y = super::act::silu(bn.forward(x));
        fold_running_stats(bn);
        return y;
    }
    let [_, c, _, _] = x.dims();
    let (mean, var, centered) = batch_stats_composed(x);
    let inv_std = var.clone().add_scalar(bn.epsilon).sqrt().recip();
    let scale = inv_std * bn.gamma.val().reshape([1, c, 1, 1]);
    let y = centered * scale + bn.beta.val().reshape([1, c, 1, 1]);
    update_running_stats(bn, mean.reshape([c]), var.reshape([c]));
    super::act::silu(y)
}

/// The batch mean and biased variance per channel, as `[1, C, 1, 1]`, and `x − mean`, by sums over W, then
/// H, then B. Burn 0.22.1's `batch_norm_train` (and its backward) copies `x` to `[C, B·H·W]`
/// and reduces each row in one GPU workgroup: 16-64 workgroups on a 132-multiprocessor GPU,
/// ~110 ms of a 320 px, batch-8 step on an H200. Summing the contiguous axis first gives
/// `B·C·H` independent sums, and the broadcasts' gradients reduce the same way.
///
/// # Shapes
/// - `x`: `[B, C, H, W]`; outputs: `[1, C, 1, 1]` twice, `[B, C, H, W]`
fn batch_stats_composed(x: Tensor<4>) -> (Tensor<4>, Tensor<4>, Tensor<4>) {
    let [b, _, h, w] = x.dims();
    let n = (b * h * w) as f64;
    let mean_of = |t: Tensor<4>| t.sum_dim(3).sum_dim(2).sum_dim(0).div_scalar(n);
    let mean = mean_of(x.clone());
    let centered = x - mean.clone();
    let var = mean_of(centered.clone() * centered.clone());
    (mean, var, centered)
}

/// Folds the running statistics' latest update into their shared value. Burn keeps each
/// thread's update apart until that same thread reads it back (`value_sync`), and averages
/// the threads' updates then. Steps run on whichever rayon worker picks them up (the trainer
/// runs them on the pool), so a step on another thread would read a stale value: folded in
/// at once, the next step reads it on any thread. A division by 1, exact: the statistics are
/// those of Ultralytics' single-threaded update, bit for bit the same on any thread. Nothing
/// to do (a lock and an empty map) when there was no update.
fn fold_running_stats(bn: &BatchNorm) {
    bn.running_mean.value_sync();
    bn.running_var.value_sync();
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::BatchNormConfig;
    use burn::tensor::Distribution;

    /// The AVX-512 passes through SiLU against the generic ones (which the other tests do not
    /// reach on an AVX-512 CPU), on planes that end in every partial vector and span blocks.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx512_silu_passes_match_the_generic_ones() {
        if !avx512() {
            return;
        }
        let close = |a: f64, b: f64, what: &str| assert!((a - b).abs() <= 2e-6 * b.abs().max(1.0), "{what}: {a} vs {b}");
        for n in [0, 1, 15, 16, 17, 100, 1023, 1024, 1025, 2500] {
            let x: Vec<f32> = (0..n).map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.21).collect();
            let dy: Vec<f32> = (0..n).map(|i| ((i * 53 % 97) as f32 - 48.0) * 0.03).collect();
            let (mean, scale, beta) = (0.7, 1.3, -0.4);
            // SAFETY: both versions write every element.
            let init = |v: Vec<MaybeUninit<f32>>| -> Vec<f32> { v.into_iter().map(|e| unsafe { e.assume_init() }).collect() };
            let (mut a, mut b) = (vec![MaybeUninit::new(f32::NAN); n], vec![MaybeUninit::new(f32::NAN); n]);
            apply_plane(&mut a, &x, mean, scale, beta, true);
            // SAFETY: AVX-512F checked above.
            unsafe { x86::apply_silu(&mut b, &x, mean, scale, beta) };
            for (a, b) in init(a).iter().zip(init(b)) {
                close(b as f64, *a as f64, "silu");
            }
            let (mut a, mut b) = (vec![MaybeUninit::new(f32::NAN); n], vec![MaybeUninit::new(f32::NAN); n]);
            let want = plane_silu_grad_sums(&x, &dy, &mut a, mean, scale, beta);
            // SAFETY: as above.
            let got = unsafe { x86::silu_grad_sums(&x, &dy, &mut b, mean, scale, beta) };
            let a = init(a);
            for (a, b) in a.iter().zip(init(b)) {
                close(b as f64, *a as f64, "d");
            }
            // The sums to within f32 rounding of their terms' magnitudes.
            let (abs, abs_x) = a.iter().zip(&x).fold((0f64, 0f64), |(s, t), (d, x)| (s + d.abs() as f64, t + (d * (x - mean)).abs() as f64));
            assert!((got.0 - want.0).abs() <= 1e-6 * abs.max(1.0), "sum d: {} vs {}", got.0, want.0);
            assert!((got.1 - want.1).abs() <= 1e-6 * abs_x.max(1.0), "sum d (x - mean): {} vs {}", got.1, want.1);
        }
    }

    #[test]
    fn inference_devices_are_refused() {
        let device = crate::backend::cpu_device();
        let bn = BatchNormConfig::new(2).init(&device);
        assert!(batch_norm_train(&bn, Tensor::<4>::zeros([1, 2, 3, 3], &device)).is_err());
    }

    /// Training steps run on whichever rayon worker takes them (the trainer runs its steps
    /// on the pool): three forwards, each on a thread of its own, leave the same running
    /// statistics, bit for bit, as three on one thread; by our op and by the composed one
    /// (what GPU devices run). Burn's `RunningState` keeps updates
    /// per thread until that thread reads them back; without folding each update in at once,
    /// a forward on a new thread read a stale value, and the threads' values were averaged.
    #[test]
    fn running_statistics_do_not_depend_on_the_thread() {
        let device = crate::backend::cpu_device().autodiff();
        let xs: Vec<TensorData> = (0..3)
            .map(|i| Tensor::<4>::random([2, 3, 5, 4], Distribution::Normal(i as f64, 1.0 + i as f64), &device).into_data())
            .collect();
        let stats = |threads: bool, ours: bool| {
            let bn = BatchNormConfig::new(3).with_momentum(0.1).init(&device);
            for x in &xs {
                let forward = || {
                    let x = Tensor::<4>::from_data(x.clone(), &device);
                    if ours {
                        batch_norm_silu_train(&bn, x).unwrap_or_else(|_| panic!("refused"));
                    } else {
                        burn_batch_norm_silu(&bn, x);
                    }
                };
                if threads {
                    std::thread::scope(|s| {
                        s.spawn(forward);
                    });
                } else {
                    forward();
                }
            }
            let v = |t: Tensor<1>| -> Vec<f32> { t.into_data().try_to_vec().unwrap() };
            (v(bn.running_mean.value_sync()), v(bn.running_var.value_sync()))
        };
        for ours in [true, false] {
            let (one, many) = (stats(false, ours), stats(true, ours));
            assert_eq!(one, many, "ours: {ours}");
            assert!(one.0.iter().any(|&m| m != 0.0), "the running mean moved (ours: {ours})");
        }
    }

    #[test]
    fn matches_burn_batch_norm_in_training() {
        check_against_burn(false, false);
    }

    #[test]
    fn fused_silu_matches_burn_batch_norm_then_silu() {
        check_against_burn(true, false);
    }

    /// The GPU backends' composition ([`burn_batch_norm_silu`]), on the CPU backend.
    #[test]
    fn composed_matches_burn_batch_norm_then_silu() {
        check_against_burn(true, true);
    }

    /// Output, all gradients and running statistics against Burn's `BatchNorm` (then SiLU),
    /// on planes long enough for several sum blocks and with a tail that is not a multiple
    /// of the 16 lanes.
    fn check_against_burn(silu: bool, composed: bool) {
        let device = crate::backend::cpu_device().autodiff();
        let (b, c, h, w) = (3, 5, 37, 41);
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
            let y = match (ours, silu) {
                (true, true) if composed => burn_batch_norm_silu(&bn, x.clone()),
                (true, false) => batch_norm_train(&bn, x.clone()).unwrap_or_else(|_| panic!("refused")),
                (true, true) => batch_norm_silu_train(&bn, x.clone()).unwrap_or_else(|_| panic!("refused")),
                (false, false) => bn.forward(x.clone()),
                (false, true) => burn::tensor::activation::silu(bn.forward(x.clone())),
            };
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
