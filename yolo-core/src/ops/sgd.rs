//! The optimizer step of training (`yolo-train`'s `NesterovSgd`, `clip_grad_norm` and the EMA
//! blend) as one parallel pass per parameter on the `flex` CPU backend.
//!
//! As tensor ops the SGD update is six elementwise passes per parameter, each allocating, and
//! the gradient norm two more, on one thread (Burn's `flex` ops): ~12 ms of a yolov8n step at
//! 320 with the other cores idle. Here the update is one pass over chunks on all cores, with
//! the same f32 operations in the same order (the same bits); the sum of squares adds f32 lanes
//! per chunk and the chunks in f64 (its last bits differ from Burn's f32 sum).

use burn::tensor::Tensor;
use rayon::prelude::*;
use std::mem::MaybeUninit;

use crate::cpu::flex::{flex_f32, flex_tensor};

/// Values per task.
const CHUNK: usize = 1 << 14;

/// PyTorch's `SGD(nesterov=True, dampening=0)` with coupled weight decay, one step of one
/// parameter: `g = grad + p·wd` (`grad` when `wd` is 0); `v = v·m + g` (`v = g` at the first
/// step); `p − (g + v·m)·lr`, in f32, each product and sum rounded as the tensor ops round
/// them. Returns the new `(p, v)`, or `None` when the tensors are not f32 `flex` tensors of one
/// shape (the caller then runs tensor ops).
///
/// # Shapes
/// - `p`, `grad`, `v`: the parameter's shape; outputs the same
pub fn nesterov_sgd_step<const D: usize>(p: &Tensor<D>, grad: &Tensor<D>, v: Option<&Tensor<D>>, wd: f64, m: f64, lr: f64) -> Option<(Tensor<D>, Tensor<D>)> {
    let dims = p.dims();
    if grad.dims() != dims || v.is_some_and(|v| v.dims() != dims) {
        return None;
    }
    let pf = flex_f32(p.clone())?;
    let gf = flex_f32(grad.clone())?;
    let vf = match v {
        Some(v) => Some(flex_f32(v.clone())?),
        None => None,
    };
    let (ps, gs) = (pf.as_slice::<f32>()?, gf.as_slice::<f32>()?);
    let vs = match &vf {
        Some(t) => Some(t.as_slice::<f32>()?),
        None => None,
    };
    // The tensor ops take their scalars as f32 (`mul_scalar` converts the f64); whether to
    // decay is decided on the f64, as the tensor-op version does.
    let decay = wd != 0.0;
    let (wd, m, lr) = (wd as f32, m as f32, lr as f32);
    let n = ps.len();
    let (mut new_p, mut new_v) = (Vec::<f32>::with_capacity(n), Vec::<f32>::with_capacity(n));
    new_p.spare_capacity_mut()[..n]
        .par_chunks_mut(CHUNK)
        .zip(new_v.spare_capacity_mut()[..n].par_chunks_mut(CHUNK))
        .enumerate()
        .for_each(|(i, (po, vo))| {
            let r = i * CHUNK..i * CHUNK + po.len();
            let (p, g) = (&ps[r.clone()], &gs[r.clone()]);
            // One loop per case (decay or not, first step or not), so that each vectorises.
            match (decay, vs) {
                (true, Some(vs)) => update(po, vo, p, g, &vs[r], |p, g| g + p * wd, m, lr),
                (false, Some(vs)) => update(po, vo, p, g, &vs[r], |_, g| g, m, lr),
                (true, None) => update_first(po, vo, p, g, |p, g| g + p * wd, m, lr),
                (false, None) => update_first(po, vo, p, g, |_, g| g, m, lr),
            }
        });
    // SAFETY: the chunks above cover and write all n elements of both.
    unsafe {
        new_p.set_len(n);
        new_v.set_len(n);
    }
    Some((flex_tensor(new_p, dims), flex_tensor(new_v, dims)))
}

/// `v = v·m + g`, `p − (g + v·m)·lr` with `g = decay(p, grad)`, into `po` and `vo`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn update(po: &mut [MaybeUninit<f32>], vo: &mut [MaybeUninit<f32>], p: &[f32], grad: &[f32], v: &[f32], decay: impl Fn(f32, f32) -> f32, m: f32, lr: f32) {
    for ((((po, vo), &p), &grad), &v) in po.iter_mut().zip(vo.iter_mut()).zip(p).zip(grad).zip(v) {
        let g = decay(p, grad);
        let v = v * m + g;
        vo.write(v);
        po.write(p - (g + v * m) * lr);
    }
}

/// [`update`] at the first step (`v = g`).
#[inline(always)]
fn update_first(po: &mut [MaybeUninit<f32>], vo: &mut [MaybeUninit<f32>], p: &[f32], grad: &[f32], decay: impl Fn(f32, f32) -> f32, m: f32, lr: f32) {
    for (((po, vo), &p), &grad) in po.iter_mut().zip(vo.iter_mut()).zip(p).zip(grad) {
        let g = decay(p, grad);
        vo.write(g);
        po.write(p - (g + g * m) * lr);
    }
}

/// `t · c` (`c` rounded to f32, as `mul_scalar` does) of an f32 `flex` tensor on all cores;
/// `None` for other tensors.
pub fn scale<const D: usize>(t: &Tensor<D>, c: f64) -> Option<Tensor<D>> {
    let f = flex_f32(t.clone())?;
    let xs = f.as_slice::<f32>()?;
    let c = c as f32;
    let mut out = Vec::<f32>::with_capacity(xs.len());
    out.spare_capacity_mut()[..xs.len()].par_chunks_mut(CHUNK).zip(xs.par_chunks(CHUNK)).for_each(|(o, x)| {
        for (o, x) in o.iter_mut().zip(x) {
            o.write(x * c);
        }
    });
    // SAFETY: the chunks above cover and write every element.
    unsafe { out.set_len(xs.len()) };
    Some(flex_tensor(out, t.dims()))
}

/// `a·wa + b·wb` (weights rounded to f32, each product and the sum rounded as `mul_scalar`
/// and `+` round them: the same bits) of two f32 `flex` tensors of one shape, on all cores;
/// `None` for other tensors. The EMA's blend (`ema·d + model·(1 − d)`).
pub fn blend<const D: usize>(a: &Tensor<D>, b: &Tensor<D>, wa: f64, wb: f64) -> Option<Tensor<D>> {
    if a.dims() != b.dims() {
        return None;
    }
    let (fa, fb) = (flex_f32(a.clone())?, flex_f32(b.clone())?);
    let (xa, xb) = (fa.as_slice::<f32>()?, fb.as_slice::<f32>()?);
    let (wa, wb) = (wa as f32, wb as f32);
    let mut out = Vec::<f32>::with_capacity(xa.len());
    out.spare_capacity_mut()[..xa.len()].par_chunks_mut(CHUNK).zip(xa.par_chunks(CHUNK).zip(xb.par_chunks(CHUNK))).for_each(|(o, (x, y))| {
        for ((o, x), y) in o.iter_mut().zip(x).zip(y) {
            o.write(x * wa + y * wb);
        }
    });
    // SAFETY: the chunks above cover and write every element.
    unsafe { out.set_len(xa.len()) };
    Some(flex_tensor(out, a.dims()))
}

/// `Σ x²` of an f32 `flex` tensor, on all cores (f32 lanes per chunk, chunks added in f64 in
/// order: the same value on any thread count); `None` for other tensors.
pub fn sum_squares<const D: usize>(t: &Tensor<D>) -> Option<f64> {
    let f = flex_f32(t.clone())?;
    let xs = f.as_slice::<f32>()?;
    let parts: Vec<f64> = xs
        .par_chunks(CHUNK)
        .map(|c| {
            let mut lanes = [0f32; 16];
            let body = c.chunks_exact(16);
            let rest: f32 = body.remainder().iter().map(|x| x * x).sum();
            for v in body {
                for l in 0..16 {
                    lanes[l] += v[l] * v[l];
                }
            }
            lanes.iter().map(|&x| x as f64).sum::<f64>() + rest as f64
        })
        .collect();
    Some(parts.iter().sum())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tensor-op update this replaces (`yolo-train`'s `NesterovSgd` before).
    fn by_tensor_ops<const D: usize>(p: Tensor<D>, grad: Tensor<D>, v: Option<Tensor<D>>, wd: f64, m: f64, lr: f64) -> (Tensor<D>, Tensor<D>) {
        let g = if wd != 0.0 { grad + p.clone().mul_scalar(wd) } else { grad };
        let v = match v {
            Some(v) => v.mul_scalar(m) + g.clone(),
            None => g.clone(),
        };
        let update = g + v.clone().mul_scalar(m);
        (p - update.mul_scalar(lr), v)
    }

    /// Bit for bit the tensor ops' result: first and later steps, with and without weight
    /// decay, over several chunks and a ragged last one.
    #[test]
    fn matches_tensor_ops_bit_for_bit() {
        let device = crate::backend::cpu_device();
        let shape = [3, 5, 37, 61];
        let t = |seed: u64| {
            use rand::{Rng, SeedableRng};
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            let v: Vec<f32> = (0..shape.iter().product::<usize>()).map(|_| rng.random_range(-2.0f32..2.0)).collect();
            Tensor::<4>::from_data(burn::tensor::TensorData::new(v, shape), &device)
        };
        let (p, g, v) = (t(1), t(2), t(3));
        for (wd, m, lr) in [(0.0, 0.937, 0.01), (5e-4, 0.8, 0.0123), (5e-4, 0.937, 1e-3)] {
            for v in [None, Some(&v)] {
                let (p1, v1) = nesterov_sgd_step(&p, &g, v, wd, m, lr).expect("flex tensors");
                let (p2, v2) = by_tensor_ops(p.clone(), g.clone(), v.cloned(), wd, m, lr);
                let bits = |t: Tensor<4>| -> Vec<u32> { t.into_data().try_to_vec::<f32>().unwrap().iter().map(|x| x.to_bits()).collect() };
                assert_eq!(bits(p1), bits(p2), "p, wd {wd}, m {m}, lr {lr}, velocity {}", v.is_some());
                assert_eq!(bits(v1), bits(v2), "v, wd {wd}, m {m}, lr {lr}, velocity {}", v.is_some());
            }
        }
    }

    #[test]
    fn sum_of_squares_matches_f64() {
        let device = crate::backend::cpu_device();
        let v: Vec<f32> = (0..40_007).map(|i| ((i * 7919) % 1001) as f32 / 250.0 - 2.0).collect();
        let want: f64 = v.iter().map(|&x| (x as f64) * (x as f64)).sum();
        let t = Tensor::<1>::from_data(burn::tensor::TensorData::new(v, [40_007]), &device);
        let got = sum_squares(&t).expect("flex tensor");
        assert!((got - want).abs() <= 1e-6 * want, "{got} vs {want}");
    }

    #[test]
    fn scale_matches_mul_scalar_bit_for_bit() {
        let device = crate::backend::cpu_device();
        let v: Vec<f32> = (0..20_011).map(|i| ((i * 7919) % 1001) as f32 / 250.0 - 2.0).collect();
        let t = Tensor::<2>::from_data(burn::tensor::TensorData::new(v, [1, 20_011]), &device);
        let bits = |t: Tensor<2>| -> Vec<u32> { t.into_data().try_to_vec::<f32>().unwrap().iter().map(|x| x.to_bits()).collect() };
        assert_eq!(bits(scale(&t, 0.123456789).expect("flex tensor")), bits(t.mul_scalar(0.123456789)));
    }

    #[test]
    fn blend_matches_tensor_ops_bit_for_bit() {
        let device = crate::backend::cpu_device();
        let t = |k: usize| -> Tensor<2> {
            let v: Vec<f32> = (0..20_011).map(|i| (((i + k) * 7919) % 1001) as f32 / 250.0 - 2.0).collect();
            Tensor::from_data(burn::tensor::TensorData::new(v, [20_011, 1]), &device)
        };
        let (a, b, d) = (t(1), t(2), 0.9993_f64);
        let bits = |t: Tensor<2>| -> Vec<u32> { t.into_data().try_to_vec::<f32>().unwrap().iter().map(|x| x.to_bits()).collect() };
        assert_eq!(bits(blend(&a, &b, d, 1.0 - d).expect("flex tensors")), bits(a.mul_scalar(d) + b.mul_scalar(1.0 - d)));
    }

    #[test]
    fn refuses_mismatched_shapes() {
        let device = crate::backend::cpu_device();
        let (p, g) = (Tensor::<2>::zeros([2, 3], &device), Tensor::<2>::zeros([3, 2], &device));
        assert!(nesterov_sgd_step(&p, &g, None, 0.0, 0.9, 0.1).is_none());
    }
}
