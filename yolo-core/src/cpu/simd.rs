//! Vectorised f32 math for the CPU kernels: `exp`, `ln`, `log1p`, sigmoid and SiLU in forms
//! whose loops vectorise (Cephes' `expf` polynomial, about 2 ulp), maps over slices, a dot
//! product, the conv epilogue's bias + SiLU with explicit AVX2 / AVX-512 FMA, and
//! [`multiversion!`] to compile a loop for AVX-512 / AVX2 picked at run time.
//!
//! Burn's `silu` is two ops (a sigmoid with scalar `expf`, then a multiply): on the CPU
//! backend it was a quarter of yolov8n's inference time. The SiLU and sigmoid backend
//! operations built on these loops are in [`crate::ops::act`]; the other ops and the conv
//! kernels use them too.

/// [`exp_f32`]'s clamp of its argument.
const EXP_MIN: f32 = -87.3;
const EXP_MAX: f32 = 88.0;
/// `ln 2` in two parts for the range reduction.
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
/// Adding and subtracting 1.5 * 2^23 rounds to the nearest integer without `round()` (which
/// baseline x86-64 has no vector instruction for).
const ROUND: f32 = 12_582_912.0;
/// Cephes' degree-5 polynomial for `(exp(r) − 1 − r) / r²`, highest degree first.
const EXP_POLY: [f32; 6] = [1.987_569_2e-4, 1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 1.666_666_5e-1, 5.000_000_1e-1];

/// How the polynomials below multiply and add: [`Split`] (`a * b + c`, two roundings) or
/// [`Fused`] (`mul_add`, one). Rust never contracts `a * b + c` into an FMA itself, and an
/// unfused step costs two dependent vector ops instead of one: the loops over `exp` were
/// bound by those chains (Emerald Rapids, one core: SiLU over a slice 0.33 ns a value fused
/// against 0.51-0.76 split). `mul_add` is one instruction only where the code is compiled
/// with FMA, and a library call elsewhere, so the fused forms serve the AVX2 and AVX-512
/// builds of [`multiversion!`] and [`dispatch!`] (which bring [`fused`]'s functions into
/// scope; on aarch64, and in x86-64 builds for FMA, their baseline copy too) and the split
/// forms everything else (baseline x86-64, where an FMA-less CPU would pay a software `fmaf`
/// per step). The two differ by a few ulp at most.
pub(crate) trait MulAdd {
    fn mul_add(a: f32, b: f32, c: f32) -> f32;
}

/// `a * b + c` with two roundings (see [`MulAdd`]).
pub(crate) enum Split {}

impl MulAdd for Split {
    #[inline(always)]
    fn mul_add(a: f32, b: f32, c: f32) -> f32 {
        a * b + c
    }
}

/// `a · b + c` with one rounding, an FMA instruction in code compiled with FMA (see [`MulAdd`]).
pub(crate) enum Fused {}

impl MulAdd for Fused {
    #[inline(always)]
    fn mul_add(a: f32, b: f32, c: f32) -> f32 {
        a.mul_add(b, c)
    }
}

/// `exp(x)` for `x` in `[-87.3, 88]` (clamped outside): range reduction by `ln 2`, Cephes'
/// degree-5 polynomial, the power of two built from the exponent bits. Branch-free so that a
/// loop over it vectorises.
#[inline(always)]
fn exp_with<M: MulAdd>(x: f32) -> f32 {
    let x = x.clamp(EXP_MIN, EXP_MAX);
    // t = 1.5 * 2^23 + n: n sits in the low mantissa bits of t.
    let t = M::mul_add(x, std::f32::consts::LOG2_E, ROUND);
    let n = t - ROUND;
    let r = M::mul_add(n, -LN2_LO, M::mul_add(n, -LN2_HI, x));
    let mut p = EXP_POLY[0];
    for c in &EXP_POLY[1..] {
        p = M::mul_add(p, r, *c);
    }
    let y = M::mul_add(p * r, r, r) + 1.0;
    // 2^n from t's bits: the low 9 bits of bits(t) + 127 are n + 127 (in [1, 254] after the
    // clamp), and the shift drops the rest. No float-to-int cast: Rust's `as` saturates, and
    // that does not vectorise.
    y * f32::from_bits(t.to_bits().wrapping_add(127) << 23)
}

/// `ln(x)` for finite `x > 0` (Cephes' `logf` polynomial, about 1 ulp); branch-free so that a
/// loop over it vectorises.
#[inline(always)]
fn ln_with<M: MulAdd>(x: f32) -> f32 {
    const SQRT_HALF: f32 = std::f32::consts::FRAC_1_SQRT_2;
    let bits = x.to_bits();
    // x = m · 2^e with m in [0.5, 1), from the bits (normal x only, which callers give).
    let mut e = ((bits >> 23) & 0xff) as i32 - 126;
    let mut m = f32::from_bits((bits & 0x807f_ffff) | 0x3f00_0000);
    let small = m < SQRT_HALF;
    e -= small as i32;
    m = if small { m + m - 1.0 } else { m - 1.0 };
    let e = e as f32;
    let z = m * m;
    let mut p = 7.037_683_6e-2_f32;
    for c in [-1.151_461e-1, 1.167_699_9e-1, -1.242_014_1e-1, 1.424_932_3e-1, -1.666_805_8e-1, 2.000_071_4e-1, -2.499_999_4e-1, 3.333_333_1e-1] {
        p = M::mul_add(p, m, c);
    }
    let y = M::mul_add(m * z, p, -2.121_944_4e-4 * e) - 0.5 * z;
    M::mul_add(e, 0.693_359_4, m + y)
}

/// `ln(1 + exp(-|x|))`, the softplus tail of a stable BCE with logits: `log1p` of `t =
/// exp(-|x|)` by `ln(u) · t / (u − 1)` with `u = 1 + t` rounded (Goldberg's correction, exact
/// to a few ulp where `u` rounds), `t` when `u` rounds to 1.
#[inline(always)]
fn log1p_exp_neg_abs_with<M: MulAdd>(x: f32) -> f32 {
    let t = exp_with::<M>(-x.abs());
    let u = 1.0 + t;
    let d = u - 1.0;
    if d == 0.0 {
        t
    } else {
        ln_with::<M>(u) * (t / d)
    }
}

/// [`exp_with`], split (see [`MulAdd`]).
#[inline(always)]
pub(crate) fn exp_f32(x: f32) -> f32 {
    exp_with::<Split>(x)
}

/// [`log1p_exp_neg_abs_with`], split (see [`MulAdd`]).
#[cfg_attr(any(target_arch = "aarch64", target_feature = "fma"), allow(dead_code))]
#[inline(always)]
pub(crate) fn log1p_exp_neg_abs(x: f32) -> f32 {
    log1p_exp_neg_abs_with::<Split>(x)
}

/// Sigmoid of one value with [`exp_f32`].
#[cfg_attr(any(target_arch = "aarch64", target_feature = "fma"), allow(dead_code))]
#[inline(always)]
pub(crate) fn sigmoid_f32(x: f32) -> f32 {
    1.0 / (1.0 + exp_f32(-x))
}

/// SiLU of one value with [`exp_f32`].
#[inline(always)]
pub fn silu_f32(x: f32) -> f32 {
    x / (1.0 + exp_f32(-x))
}

/// The same functions with fused multiply-adds (see [`MulAdd`]), under the same names: the
/// AVX2 and AVX-512 builds of [`multiversion!`] and [`dispatch!`] (and every build on aarch64
/// or for FMA) import them over the split ones.
pub(crate) mod fused {
    use super::{exp_with, log1p_exp_neg_abs_with, Fused};

    #[inline(always)]
    pub(crate) fn exp_f32(x: f32) -> f32 {
        exp_with::<Fused>(x)
    }

    #[inline(always)]
    pub(crate) fn log1p_exp_neg_abs(x: f32) -> f32 {
        log1p_exp_neg_abs_with::<Fused>(x)
    }

    #[inline(always)]
    pub(crate) fn sigmoid_f32(x: f32) -> f32 {
        1.0 / (1.0 + exp_f32(-x))
    }

    #[inline(always)]
    pub(crate) fn silu_f32(x: f32) -> f32 {
        x / (1.0 + exp_f32(-x))
    }
}

/// Defines a function whose body is compiled three times (AVX-512F, AVX2 + FMA, baseline),
/// the widest the CPU has picked at run time: the portable build targets baseline x86-64,
/// whose 4-wide SSE2 would otherwise be all that loops over [`exp_f32`] and friends get.
macro_rules! multiversion {
    ($(#[$m:meta])* $vis:vis fn $name:ident($($a:ident: $t:ty),* $(,)?) $(-> $r:ty)? $body:block) => {
        $(#[$m])*
        $vis fn $name($($a: $t),*) $(-> $r)? {
            // Fused where the whole build has FMA (aarch64 always; x86-64 built for it).
            #[inline(always)]
            fn imp($($a: $t),*) $(-> $r)? {
                #[cfg(any(target_arch = "aarch64", target_feature = "fma"))]
                #[allow(unused_imports)]
                use $crate::cpu::simd::fused::{exp_f32, log1p_exp_neg_abs, sigmoid_f32, silu_f32};
                $body
            }
            #[cfg(target_arch = "x86_64")]
            {
                // The body again, with the fused `exp` and friends (AVX-512F implies FMA).
                #[target_feature(enable = "avx512f")]
                unsafe fn avx512($($a: $t),*) $(-> $r)? {
                    #[allow(unused_imports)]
                    use $crate::cpu::simd::fused::{exp_f32, log1p_exp_neg_abs, sigmoid_f32, silu_f32};
                    $body
                }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($a: $t),*) $(-> $r)? {
                    #[allow(unused_imports)]
                    use $crate::cpu::simd::fused::{exp_f32, log1p_exp_neg_abs, sigmoid_f32, silu_f32};
                    $body
                }
                if std::arch::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the CPU supports AVX-512F (checked just above).
                    return unsafe { avx512($($a),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                    // SAFETY: the CPU supports AVX2 and FMA (checked just above).
                    return unsafe { avx2($($a),*) };
                }
            }
            imp($($a),*)
        }
    };
}
pub(crate) use multiversion;

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
            // `$f` again, with the fused `exp` and friends.
            #[allow(unused_imports)]
            use $crate::cpu::simd::fused::{exp_f32, log1p_exp_neg_abs, sigmoid_f32, silu_f32};
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
        #[cfg(any(target_arch = "aarch64", target_feature = "fma"))]
        #[allow(unused_imports)]
        use $crate::cpu::simd::fused::{exp_f32, log1p_exp_neg_abs, sigmoid_f32, silu_f32};
        map($v, $f)
    }};
}

/// Whether the CPU has AVX2 and FMA (detected once), for the hand-written AVX2 + FMA kernels.
#[cfg(target_arch = "x86_64")]
pub(crate) fn avx2_fma() -> bool {
    fma::available()
}

/// SiLU in place over a slice, with the widest vector unit the CPU has (the portable build
/// targets baseline x86-64, whose 4-wide SSE2 would otherwise be all the loop gets).
pub fn silu_slice(v: &mut [f32]) {
    bias_silu_slice(v, 0.0)
}

/// `v[i] = silu(v[i] + bias)` in place: the epilogue of a fused conv (see `cpu::conv`).
pub fn bias_silu_slice(v: &mut [f32], bias: f32) {
    #[cfg(target_arch = "x86_64")]
    if fma::available() {
        // SAFETY: AVX2 and FMA are present; source and destination are the same `v.len()`
        // values.
        return unsafe { fma::bias_silu_widest(v.as_ptr(), v.as_mut_ptr(), v.len(), bias) };
    }
    dispatch!(v, |e: f32| silu_f32(e + bias))
}

/// SiLU with explicit FMA for AVX2 + FMA CPUs, the conv epilogues' activation (about a tenth
/// of a yolov8n forward). Rust does not contract `a * b + c`, so the compiled [`silu_f32`]
/// spends a multiply and an add on each polynomial step; and its `exp` (Cephes': a two-step
/// range reduction, a degree-7 polynomial, then `1 + e` and the division) is more than the
/// sigmoid needs. Here `exp(−x) = 2ⁿ · p(r)` with a one-step reduction by `ln 2` (the FMA
/// keeps `n · ln 2` exact but for `ln 2`'s own rounding, `n · 1.9e-9`), a degree-6 minimax
/// polynomial for `exp(r)` (relative error 3e-9; `tools/fit_exp_poly.py` fits it) in Horner
/// form, and `x / fma(p, 2ⁿ, 1)`: 17 vector ops where
/// the Cephes form took 22; 0.54 against 0.86 ns a value on this machine's Zen 3. Against
/// f64: within 3 ulp for `|x| ≤ 30` and 5 ulp out to 80, where SiLU is below 1e-30 (the
/// Cephes form: 2 ulp). The last partial vector is masked, so every element takes the same
/// path.
#[cfg(target_arch = "x86_64")]
pub(crate) mod fma {
    use super::ROUND;
    use std::arch::x86_64::*;

    /// `exp(r)` for `|r| ≤ ln 2 / 2` is `1 + r + r² · (P[0] + P[1] r + … + P[4] r⁴)`: minimax
    /// for the relative error (3.1e-9, under a tenth of an ulp).
    const P: [f32; 5] = [0.499_999_94, 0.166_665_21, 0.041_668_39, 0.008_368_71, 0.001_381_461_3];

    /// Whether the CPU has AVX2 and FMA (detected once).
    #[inline]
    pub(super) fn available() -> bool {
        static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *HAS.get_or_init(|| std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma"))
    }

    #[inline(always)]
    unsafe fn silu(x: __m256) -> __m256 {
        // SAFETY: register-only intrinsics; the caller has AVX2 and FMA.
        unsafe {
            // −x clamped to [−87.3, 88] (2ⁿ below stays a normal float); beyond, the SiLU is
            // x or 0 to float precision. A NaN passes the clamp (`max`/`min` return their
            // second operand when one is NaN) and gives NaN.
            let xc = _mm256_min_ps(_mm256_set1_ps(87.3), _mm256_max_ps(_mm256_set1_ps(-88.0), x));
            let round = _mm256_set1_ps(ROUND);
            // t = 1.5 · 2²³ + n with n = round(−x / ln 2) in its low mantissa bits.
            let t = _mm256_fnmadd_ps(xc, _mm256_set1_ps(std::f32::consts::LOG2_E), round);
            let n = _mm256_sub_ps(t, round);
            // r = −x − n ln 2, |r| ≤ ln 2 / 2.
            let r = _mm256_fnmsub_ps(n, _mm256_set1_ps(std::f32::consts::LN_2), xc);
            let mut p = _mm256_fmadd_ps(_mm256_set1_ps(P[4]), r, _mm256_set1_ps(P[3]));
            p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(P[2]));
            p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(P[1]));
            p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(P[0]));
            p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0));
            p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0));
            // 2ⁿ from t's bits: the low 9 bits of bits(t) + 127 are n + 127 (in [1, 254]
            // after the clamp), and the shift drops the rest.
            let two_n = _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(_mm256_castps_si256(t), _mm256_set1_epi32(127))));
            _mm256_div_ps(x, _mm256_fmadd_ps(p, two_n, _mm256_set1_ps(1.0)))
        }
    }

    /// Whether the CPU has AVX-512F (detected once).
    #[inline]
    pub(crate) fn available512() -> bool {
        static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *HAS.get_or_init(|| std::arch::is_x86_feature_detected!("avx512f"))
    }

    /// The mask of lanes `i..end` of a 16-lane vector (all 16 when `end − i ≥ 16`), for
    /// masked loads and stores of a slice's last partial vector.
    #[inline(always)]
    pub(crate) fn lanes16(i: usize, end: usize) -> __mmask16 {
        if end - i >= 16 {
            0xffff
        } else {
            ((1u32 << (end - i)) - 1) as u16
        }
    }

    /// [`silu`] on 16 lanes: the same operations lane by lane, so the same bits.
    #[inline(always)]
    unsafe fn silu16(x: __m512) -> __m512 {
        // SAFETY: register-only intrinsics; the caller has AVX-512F.
        unsafe { _mm512_div_ps(x, one_plus_exp_neg16(x)) }
    }

    /// `1 + exp(−x)` on 16 lanes, as [`silu`] computes it (so `x / that` is its SiLU and
    /// `1 / that` the sigmoid), for the other ops' AVX-512 kernels.
    #[inline(always)]
    pub(crate) unsafe fn one_plus_exp_neg16(x: __m512) -> __m512 {
        // SAFETY: register-only intrinsics; the caller has AVX-512F.
        unsafe {
            let xc = _mm512_min_ps(_mm512_set1_ps(87.3), _mm512_max_ps(_mm512_set1_ps(-88.0), x));
            let round = _mm512_set1_ps(ROUND);
            let t = _mm512_fnmadd_ps(xc, _mm512_set1_ps(std::f32::consts::LOG2_E), round);
            let n = _mm512_sub_ps(t, round);
            let r = _mm512_fnmsub_ps(n, _mm512_set1_ps(std::f32::consts::LN_2), xc);
            let mut p = _mm512_fmadd_ps(_mm512_set1_ps(P[4]), r, _mm512_set1_ps(P[3]));
            p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(P[2]));
            p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(P[1]));
            p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(P[0]));
            p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0));
            p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0));
            let two_n = _mm512_castsi512_ps(_mm512_slli_epi32::<23>(_mm512_add_epi32(_mm512_castps_si512(t), _mm512_set1_epi32(127))));
            _mm512_fmadd_ps(p, two_n, _mm512_set1_ps(1.0))
        }
    }

    /// [`bias_silu`] on 16 lanes, the tail through a masked load and store: 0.27 against
    /// 0.32 ns a value (Emerald Rapids, one core), the same bits.
    ///
    /// # Safety
    /// AVX-512F; `src` readable and `dst` writable for `n` floats.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn bias_silu16(src: *const f32, dst: *mut f32, n: usize, bias: f32) {
        // SAFETY (whole body): in bounds by the caller's guarantee; the tail's load and store
        // touch only the lanes under the mask.
        unsafe {
            let b = _mm512_set1_ps(bias);
            let mut i = 0;
            while i + 16 <= n {
                _mm512_storeu_ps(dst.add(i), silu16(_mm512_add_ps(_mm512_loadu_ps(src.add(i)), b)));
                i += 16;
            }
            if i < n {
                let mask = lanes16(i, n);
                let x = _mm512_add_ps(_mm512_maskz_loadu_ps(mask, src.add(i)), b);
                _mm512_mask_storeu_ps(dst.add(i), mask, silu16(x));
            }
        }
    }

    /// `dst[i] = silu(src[i] + bias)` for `i < n` (`src` may be `dst`), on 16 lanes where the
    /// CPU has AVX-512F.
    ///
    /// # Safety
    /// AVX2 and FMA; `src` readable and `dst` writable for `n` floats.
    #[inline]
    pub(super) unsafe fn bias_silu_widest(src: *const f32, dst: *mut f32, n: usize, bias: f32) {
        // SAFETY: as the caller guarantees, with AVX-512F checked for the 16-lane version.
        unsafe {
            if available512() {
                bias_silu16(src, dst, n, bias)
            } else {
                bias_silu(src, dst, n, bias)
            }
        }
    }

    /// `dst[i] = silu(src[i] + bias)` for `i < n` (`src` may be `dst`).
    ///
    /// # Safety
    /// AVX2 and FMA; `src` readable and `dst` writable for `n` floats.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn bias_silu(src: *const f32, dst: *mut f32, n: usize, bias: f32) {
        // SAFETY (whole body): in bounds by the caller's guarantee; the tail's load is masked
        // and its values are stored one by one (a masked store, `vmaskmovps`, is microcoded
        // and slow on Zen 3: Winograd's output rows of 10-20 values paid ~5% of a forward).
        unsafe {
            let b = _mm256_set1_ps(bias);
            let mut i = 0;
            while i + 8 <= n {
                _mm256_storeu_ps(dst.add(i), silu(_mm256_add_ps(_mm256_loadu_ps(src.add(i)), b)));
                i += 8;
            }
            if i < n {
                let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
                let mask = _mm256_cmpgt_epi32(_mm256_set1_epi32((n - i) as i32), lanes);
                let x = _mm256_add_ps(_mm256_maskload_ps(src.add(i), mask), b);
                let mut tail = [0f32; 8];
                _mm256_storeu_ps(tail.as_mut_ptr(), silu(x));
                for (k, &v) in tail[..n - i].iter().enumerate() {
                    dst.add(i + k).write(v);
                }
            }
        }
    }
}

/// `v[i] = sigmoid(v[i])` in place.
pub fn sigmoid_slice(v: &mut [f32]) {
    dispatch!(v, sigmoid_f32)
}

/// `v[i] = exp(v[i])` in place (inputs below -87.3 give `exp(-87.3)`, not 0).
pub fn exp_slice(v: &mut [f32]) {
    dispatch!(v, exp_f32)
}

multiversion! {
    /// `g[i] *= silu'(x[i])` in place (the SiLU backward), `silu'(x) = s · (1 + x · (1 − s))`.
    pub fn silu_grad_slice(g: &mut [f32], x: &[f32]) {
        assert_eq!(g.len(), x.len());
        for (g, &x) in g.iter_mut().zip(x) {
            let s = sigmoid_f32(x);
            *g *= s * (1.0 + x * (1.0 - s));
        }
    }
}

/// `v[i] += bias` in place.
pub fn bias_slice(v: &mut [f32], bias: f32) {
    dispatch!(v, |e: f32| e + bias)
}

multiversion! {
    /// `Σ a[i] · b[i]` over 8 partial sums (so that the loop vectorises).
    pub fn dot(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len(), "dot: lengths differ");
        let mut s = [0f32; 8];
        let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
        let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
        for (x, y) in ca.zip(cb) {
            for l in 0..8 {
                s[l] += x[l] * y[l];
            }
        }
        s.iter().sum::<f32>() + tail
    }
}

/// `dst[i] = silu(src[i] + bias)` (or `src[i] + bias` without `silu`): the epilogue of a
/// conv whose sums are in an accumulator, written to the output in the same pass.
pub fn bias_act_copy(src: &[f32], dst: &mut [f32], bias: f32, silu: bool) {
    assert_eq!(src.len(), dst.len(), "bias_act_copy: lengths differ");
    #[cfg(target_arch = "x86_64")]
    if silu && fma::available() {
        // SAFETY: AVX2 and FMA are present; both slices hold `src.len()` values.
        return unsafe { fma::bias_silu_widest(src.as_ptr(), dst.as_mut_ptr(), src.len(), bias) };
    }
    bias_act_copy_any(src, dst, bias, silu)
}

multiversion! {
    /// [`bias_act_copy`] without explicit FMA.
    fn bias_act_copy_any(src: &[f32], dst: &mut [f32], bias: f32, silu: bool) {
        if silu {
            for (d, &s) in dst.iter_mut().zip(src) {
                *d = silu_f32(s + bias);
            }
        } else {
            for (d, &s) in dst.iter_mut().zip(src) {
                *d = s + bias;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The conv epilogues' SiLU (explicit FMA on AVX2 + FMA CPUs) against f64, over lengths
    /// that end in every partial vector, in place and copying, with and without bias.
    #[test]
    fn epilogue_silu_is_accurate() {
        let silu64 = |x: f64| x / (1.0 + (-x).exp());
        for n in 0..=19 {
            let xs: Vec<f32> = (0..n * 53).map(|i| (i as f32 - (n * 53) as f32 / 2.0) * 0.37).collect();
            let mut inplace = xs.clone();
            bias_silu_slice(&mut inplace, 0.25);
            let mut copied = vec![f32::NAN; xs.len()];
            bias_act_copy(&xs, &mut copied, 0.25, true);
            for ((x, a), b) in xs.iter().zip(&inplace).zip(&copied) {
                let want = silu64(*x as f64 + 0.25);
                assert!((*a as f64 - want).abs() <= 6e-7 * want.abs().max(1e-3), "silu({x} + 0.25): {a} vs {want}");
                assert_eq!(a.to_bits(), b.to_bits(), "in place and copying differ at {x}");
            }
        }
        // The 16-lane version gives the 8-lane one's bits, tails included.
        #[cfg(target_arch = "x86_64")]
        if fma::available() && fma::available512() {
            for n in 0..=40 {
                let xs: Vec<f32> = (0..n).map(|i| (i as f32 - 20.0) * 1.37).collect();
                let (mut a, mut b) = (vec![f32::NAN; n], vec![f32::NAN; n]);
                // SAFETY: AVX2, FMA and AVX-512F checked above; n values each.
                unsafe {
                    fma::bias_silu(xs.as_ptr(), a.as_mut_ptr(), n, -0.5);
                    fma::bias_silu16(xs.as_ptr(), b.as_mut_ptr(), n, -0.5);
                }
                assert!(a.iter().zip(&b).all(|(a, b)| a.to_bits() == b.to_bits()), "{n} values: {a:?} vs {b:?}");
            }
        }
        let mut v = vec![0.0, -0.0, f32::NAN, 200.0, -200.0];
        silu_slice(&mut v);
        assert_eq!(&v[..2], &[0.0, 0.0]);
        assert!(v[2].is_nan());
        assert_eq!(v[3], 200.0);
        assert!(v[4].abs() < 1e-30);
    }

    /// The AVX2 SiLU in ulp of the f32 nearest the exact value: 3 over `|x| ≤ 30`, 5 out to
    /// 80 (its one-step range reduction's error grows with `n`; see `fma`).
    #[test]
    fn epilogue_silu_is_within_a_few_ulp() {
        let ulps = |lo: f32, hi: f32| {
            let xs: Vec<f32> = (0..).map(|i| lo + i as f32 * 0.00731).take_while(|x| *x < hi).collect();
            let mut v = xs.clone();
            silu_slice(&mut v);
            xs.iter().zip(&v).fold(0f64, |worst, (x, y)| {
                let want = *x as f64 / (1.0 + (-*x as f64).exp());
                let near = (want as f32).abs().max(f32::MIN_POSITIVE);
                let ulp = (f32::from_bits(near.to_bits() + 1) - near) as f64;
                worst.max((*y as f64 - want).abs() / ulp)
            })
        };
        let (inner, outer) = (ulps(-30.0, 30.0), ulps(-80.0, 80.0));
        assert!(inner <= 3.0, "{inner} ulp over [-30, 30]");
        assert!(outer <= 5.0, "{outer} ulp over [-80, 80]");
    }

    #[test]
    fn exp_is_accurate() {
        // Both forms (split and fused multiply-adds).
        for exp in [exp_f32 as fn(f32) -> f32, fused::exp_f32] {
            let mut worst = 0f64;
            let mut x = -87.0f32;
            while x < 88.0 {
                let want = (x as f64).exp();
                let got = exp(x) as f64;
                worst = worst.max(((got - want) / want).abs());
                x += 0.0137;
            }
            assert!(worst < 4e-7, "max relative error {worst:e}");
        }
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
        // The slice runs the fused form where the CPU (or the whole build) has FMA.
        let fma_cpu = cfg!(any(target_arch = "aarch64", target_feature = "fma"));
        #[cfg(target_arch = "x86_64")]
        let fma_cpu = fma_cpu || std::arch::is_x86_feature_detected!("avx512f") || fma::available();
        let exp = if fma_cpu { fused::exp_f32 } else { exp_f32 };
        assert!(xs.iter().zip(&v).all(|(x, y)| *y == exp(*x)));
        let mut v = xs.clone();
        bias_slice(&mut v, -2.5);
        assert!(xs.iter().zip(&v).all(|(x, y)| *y == *x - 2.5));
        assert_eq!(exp_f32(-200.0), exp_f32(-87.3));
        assert!(exp_f32(200.0).is_finite());
    }
}
