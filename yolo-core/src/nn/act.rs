//! SiLU (`x * sigmoid(x)`), with a fast path for CPU inference.
//!
//! Burn's `silu` is two ops (a sigmoid with scalar `expf`, then a multiply): on the CPU
//! backend it was a quarter of yolov8n's inference time. For plain (non-autodiff) tensors on
//! `flex`, [`silu`] instead maps the values once, on all cores, with an exp that vectorises
//! (Cephes' `expf` polynomial, about 2 ulp; the result stays within float rounding of the
//! exact SiLU). Autodiff tensors and GPU devices use Burn's op, so training and the GPU
//! backends are unchanged.

use burn::tensor::activation;
use burn::tensor::{Device, Tensor, TensorData};
use rayon::prelude::*;

/// `exp(x)` for `x` in `[-87.3, 88]` (clamped outside): range reduction by `ln 2`, Cephes'
/// degree-5 polynomial, the power of two built from the exponent bits. Branch-free so that a
/// loop over it vectorises.
#[inline(always)]
fn exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding and subtracting 1.5 * 2^23 rounds to the nearest integer without `round()`
    // (which baseline x86-64 has no vector instruction for).
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.3, 88.0);
    // t = 1.5 * 2^23 + n: n sits in the low mantissa bits of t.
    let t = x * LOG2E + ROUND;
    let n = t - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_2e-4_f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 5.000_000_1e-1;
    let y = p * r * r + r + 1.0;
    // 2^n from t's bits: the low 9 bits of bits(t) + 127 are n + 127 (in [1, 254] after the
    // clamp), and the shift drops the rest. No float-to-int cast: Rust's `as` saturates, and
    // that does not vectorise.
    y * f32::from_bits(t.to_bits().wrapping_add(127) << 23)
}

/// SiLU of one value with [`exp_f32`].
#[inline(always)]
pub fn silu_f32(x: f32) -> f32 {
    x / (1.0 + exp_f32(-x))
}

fn fast_path(device: &Device) -> bool {
    !device.is_autodiff() && *device == Device::flex()
}

/// `x * sigmoid(x)`.
///
/// # Shapes
/// - `x`: any; output: the same
pub fn silu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    let device = x.device();
    if !fast_path(&device) {
        return activation::silu(x);
    }
    let shape = x.shape();
    if x.dtype() != burn::tensor::DType::F32 {
        return activation::silu(x);
    }
    // Consumed, not cloned: the buffer is read out once, mapped in place, handed back.
    let mut v: Vec<f32> = x
        .into_data()
        .try_into_vec::<f32>()
        .expect("dtype checked to be f32 above");
    v.par_chunks_mut(1 << 14).for_each(silu_slice);
    Tensor::from_data(TensorData::new(v, shape), &device)
}

/// Maps a slice in place with `$f`, compiled three times (AVX-512F, AVX2 + FMA, baseline) and
/// picked at run time by what the CPU has.
macro_rules! dispatch {
    ($v:expr, $f:expr) => {{
        #[inline(always)]
        fn map(v: &mut [f32], f: impl Fn(f32) -> f32) {
            v.iter_mut().for_each(|e| *e = f(*e));
        }
        #[cfg(target_arch = "x86_64")]
        {
            #[target_feature(enable = "avx512f")]
            unsafe fn avx512(v: &mut [f32], f: impl Fn(f32) -> f32) {
                map(v, f)
            }
            #[target_feature(enable = "avx2,fma")]
            unsafe fn avx2(v: &mut [f32], f: impl Fn(f32) -> f32) {
                map(v, f)
            }
            if std::arch::is_x86_feature_detected!("avx512f") {
                // SAFETY: the CPU supports AVX-512F (checked just above).
                return unsafe { avx512($v, $f) };
            }
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                // SAFETY: the CPU supports AVX2 and FMA (checked just above).
                return unsafe { avx2($v, $f) };
            }
        }
        map($v, $f)
    }};
}

/// SiLU in place over a slice, with the widest vector unit the CPU has (the portable build
/// targets baseline x86-64, whose 4-wide SSE2 would otherwise be all the loop gets).
pub fn silu_slice(v: &mut [f32]) {
    dispatch!(v, |e: f32| silu_f32(e))
}

/// `v[i] = silu(v[i] + bias)` in place: the epilogue of a fused conv (see `nn::cpu_conv`).
pub fn bias_silu_slice(v: &mut [f32], bias: f32) {
    dispatch!(v, |e: f32| silu_f32(e + bias))
}

/// `v[i] = sigmoid(v[i])` in place.
pub fn sigmoid_slice(v: &mut [f32]) {
    dispatch!(v, |e: f32| 1.0 / (1.0 + exp_f32(-e)))
}

/// `v[i] = exp(v[i])` in place (inputs below -87.3 give `exp(-87.3)`, not 0).
pub fn exp_slice(v: &mut [f32]) {
    dispatch!(v, exp_f32)
}

/// `v[i] += bias` in place.
pub fn bias_slice(v: &mut [f32], bias: f32) {
    dispatch!(v, |e: f32| e + bias)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_accurate() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let want = (x as f64).exp();
            let got = exp_f32(x) as f64;
            worst = worst.max(((got - want) / want).abs());
            x += 0.0137;
        }
        assert!(worst < 4e-7, "max relative error {worst:e}");
        // The vectorised slice versions agree with the scalar one.
        let xs: Vec<f32> = (0..1000).map(|i| (i as f32 - 500.0) * 0.05).collect();
        let mut v = xs.clone();
        silu_slice(&mut v);
        for (x, y) in xs.iter().zip(&v) {
            assert!((silu_f32(*x) - y).abs() <= 1e-6 * y.abs().max(1.0), "silu({x}): {y}");
        }
        let mut v = xs.clone();
        bias_silu_slice(&mut v, 0.75);
        for (x, y) in xs.iter().zip(&v) {
            assert!((silu_f32(*x + 0.75) - y).abs() <= 1e-6 * y.abs().max(1.0), "silu({x} + 0.75): {y}");
        }
        let mut v = xs.clone();
        sigmoid_slice(&mut v);
        for (x, y) in xs.iter().zip(&v) {
            let want = 1.0 / (1.0 + (-(*x as f64)).exp());
            assert!((*y as f64 - want).abs() <= 1e-6, "sigmoid({x}): {y}");
        }
        let mut v = xs.clone();
        exp_slice(&mut v);
        assert!(xs.iter().zip(&v).all(|(x, y)| *y == exp_f32(*x)));
        let mut v = xs.clone();
        bias_slice(&mut v, -2.5);
        assert!(xs.iter().zip(&v).all(|(x, y)| *y == *x - 2.5));
        assert_eq!(exp_f32(-200.0), exp_f32(-87.3));
        assert!(exp_f32(200.0).is_finite());
    }

    #[test]
    fn silu_matches_the_definition() {
        for &x in &[-100.0f32, -20.0, -3.5, -1.0, -1e-3, 0.0, 1e-3, 0.5, 2.0, 7.0, 30.0, 100.0] {
            let want = (x as f64) / (1.0 + (-(x as f64)).exp());
            let got = silu_f32(x) as f64;
            assert!((got - want).abs() <= 1e-6 * want.abs().max(1.0), "silu({x}) = {got}, want {want}");
        }
        let device = crate::backend::cpu_device();
        let t = Tensor::<2>::from_data(TensorData::new(vec![-2.0f32, -0.5, 0.0, 0.5, 2.0, 9.0], [2, 3]), &device);
        let fast: Vec<f32> = silu(t.clone()).into_data().try_to_vec().unwrap();
        let burn: Vec<f32> = activation::silu(t).into_data().try_to_vec().unwrap();
        for (a, b) in fast.iter().zip(&burn) {
            assert!((a - b).abs() <= 1e-6, "{a} vs {b}");
        }
    }
}
