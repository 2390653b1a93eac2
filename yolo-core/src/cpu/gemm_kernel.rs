//! Packed f32 GEMM micro-kernels for the CPU convolution (`cpu::conv`).
//!
//! A micro-kernel computes one `MR x NR` block of `C = A · B` from two packed panels:
//! `a` holds `kc` columns of `MR` rows (`a[k·MR + i] = A[i, k]`), `b` holds `kc` rows of `NR`
//! columns (`b[k·NR + j] = B[k, j]`), and the block is written to (or added into) `c` with row
//! stride `ldc`. For a convolution, rows are output channels (the weights, packed once and
//! cached by the module) and columns are output pixels, contiguous in NCHW: `b` is either a
//! panel the im2col gather writes straight into, or (`ldb`, segments) rows of the padded
//! input read in place, one segment per kernel tap; each block's `MR · NR` sums stay in
//! registers for the whole reduction. [`DotKernel`]s serve the weight gradient.
//!
//! Kernels: AVX2 + FMA (`6 x 16`: 12 accumulators of 8 lanes) and AVX-512F (`12 x 32`: 24
//! accumulators of 16 lanes), picked at run time. Both are one macro instantiated with the
//! ISA's intrinsics; a portable instantiation of the same macro (plain arrays) checks the
//! macro's logic at both shapes in the tests, so that a machine without AVX-512 still tests
//! the `12 x 32` blocking. Other CPUs keep the `gemm` crate (see [`kernel`]).

/// A micro-kernel and its block shape.
#[derive(Clone, Copy)]
pub struct Kernel {
    /// Rows of the block (output channels).
    pub mr: usize,
    /// Columns of the block (output pixels).
    pub nr: usize,
    /// What it runs on, for reports.
    pub name: &'static str,
    f: unsafe fn(*const usize, usize, usize, *const f32, usize, *const f32, usize, *mut f32, usize, bool),
}

impl std::fmt::Debug for Kernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Kernel({} {}x{})", self.name, self.mr, self.nr)
    }
}

impl Kernel {
    /// `c[i·ldc + j] (+)= Σ_k a[k·lda + i] · b[k·ldb + j]` for `i < mr`, `j < nr`; adds into
    /// `c` with `accumulate`, overwrites it otherwise. `lda = mr` and `ldb = nr` read packed
    /// panels; larger strides read `mr` (`nr`) columns of a row-major matrix in place.
    ///
    /// # Safety
    /// `a` must address `kc` rows of `mr` values `lda` apart, `b` `kc` rows of `nr` values `ldb`
    /// apart, and `c` `mr` rows of `nr` writable values `ldc` apart, not overlapping `a` or `b`.
    #[inline]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn run(&self, kc: usize, a: *const f32, lda: usize, b: *const f32, ldb: usize, c: *mut f32, ldc: usize, accumulate: bool) {
        // SAFETY: forwarded to the caller.
        unsafe { self.run_segments(&[0], kc, a, lda, b, ldb, c, ldc, accumulate) }
    }

    /// [`run`](Self::run) over a reduction of `segs.len()` segments of `kc` rows: segment `s`
    /// reads its `b` rows from `b + segs[s]`, while `a` runs on through all of them
    /// (`segs.len() · kc` rows `lda` apart). A conv's kernel taps are the segments: one call
    /// sums all of them in registers.
    ///
    /// # Safety
    /// As [`run`](Self::run), with `a` holding `segs.len() · kc` rows and every `b + segs[s]`
    /// addressing `kc` rows of `nr` values `ldb` apart.
    #[inline]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn run_segments(&self, segs: &[usize], kc: usize, a: *const f32, lda: usize, b: *const f32, ldb: usize, c: *mut f32, ldc: usize, accumulate: bool) {
        // SAFETY: forwarded to the caller; `f` was chosen for this CPU by `kernel`.
        unsafe { (self.f)(segs.as_ptr(), segs.len(), kc, a, lda, b, ldb, c, ldc, accumulate) }
    }
}

/// The widest kernel this CPU runs (AVX-512F, then AVX2 + FMA), detected once; `None` on
/// other CPUs, where `cpu::conv` uses the `gemm` crate.
pub fn kernel() -> Option<Kernel> {
    static KERNEL: std::sync::OnceLock<Option<Kernel>> = std::sync::OnceLock::new();
    *KERNEL.get_or_init(detect)
}

fn detect() -> Option<Kernel> {
    #[cfg(target_arch = "x86_64")]
    {
        // `YOLO_RS_KERNEL=avx2` keeps an AVX-512 CPU on the AVX2 kernels (some CPUs run
        // 512-bit FMAs on one port only, where the wider kernel gains little): for A/B runs.
        let avx2_only = std::env::var("YOLO_RS_KERNEL").is_ok_and(|v| v.eq_ignore_ascii_case("avx2"));
        if !avx2_only && std::arch::is_x86_feature_detected!("avx512f") {
            return Some(Kernel { mr: 12, nr: 32, name: "avx512", f: x86::avx512_12x32 });
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            return Some(Kernel { mr: 6, nr: 16, name: "avx2", f: x86::avx2_6x16 });
        }
    }
    None
}

/// The portable instantiations (plain arrays, no intrinsics) at the AVX2 and AVX-512 block
/// shapes: the same macro as the SIMD kernels, for the tests.
pub fn portable_kernels() -> [Kernel; 2] {
    [
        Kernel { mr: 6, nr: 16, name: "portable", f: portable::p_6x16 },
        Kernel { mr: 12, nr: 32, name: "portable", f: portable::p_12x32 },
    ]
}

/// Defines `unsafe fn $name(segs, nseg, kc, a, lda, b, ldb, c, ldc, accumulate)`: an `$mr x ($nv·$w)` block with
/// `$mr · $nv` accumulators of vector type `$v` (`$w` lanes), from the given vector ops, and
/// `$prefetch`, a cache hint for the `a` row [`PF_K`] rows ahead (or a no-op).
macro_rules! micro_kernel {
    ($(#[$attr:meta])* $name:ident: $v:ty, lanes $w:expr, rows $mr:expr, vectors $nv:expr,
     zero $zero:expr, load $load:expr, store $store:expr, splat $splat:expr, fma $fma:expr, add $add:expr,
     prefetch $prefetch:expr) => {
        $(#[$attr])*
        #[allow(clippy::too_many_arguments)]
        pub(super) unsafe fn $name(segs: *const usize, nseg: usize, kc: usize, a: *const f32, lda: usize, b: *const f32, ldb: usize, c: *mut f32, ldc: usize, accumulate: bool) {
            const MR: usize = $mr;
            const NV: usize = $nv;
            const W: usize = $w;
            // SAFETY (whole body): the caller guarantees that `segs` holds nseg offsets, `a`
            // addresses nseg·kc rows of MR values lda apart, each `b + segs[s]` kc rows of
            // NV·W values ldb apart, and `c` MR rows of NV·W values ldc apart.
            unsafe {
                let mut acc: [[$v; NV]; MR] = [[$zero(); NV]; MR];
                let mut a = a;
                for s in 0..nseg {
                    let mut b = b.add(*segs.add(s));
                    for _ in 0..kc {
                        // `a` PF_K rows ahead: the weights stream from memory once per conv
                        // (the model's do not stay in cache between layers), in the order the
                        // kernel calls read them.
                        $prefetch(a.wrapping_add(PF_K * lda));
                        let mut bv: [$v; NV] = [$zero(); NV];
                        for j in 0..NV {
                            bv[j] = $load(b.add(j * W));
                        }
                        for i in 0..MR {
                            let av = $splat(*a.add(i));
                            for j in 0..NV {
                                acc[i][j] = $fma(av, bv[j], acc[i][j]);
                            }
                        }
                        // Wrapping: after a segment's last row these point past what is read.
                        a = a.wrapping_add(lda);
                        b = b.wrapping_add(ldb);
                    }
                }
                for i in 0..MR {
                    for j in 0..NV {
                        let p = c.add(i * ldc + j * W);
                        let v = if accumulate { $add($load(p), acc[i][j]) } else { acc[i][j] };
                        $store(p, v);
                    }
                }
            }
        }
    };
}

/// Defines `unsafe fn $name(n, a, lda, b, ldb, c, ldc)`: an `$mr x $nr` block of dot products
/// with one accumulator of vector type `$v` (`$w` lanes) each, reduced by `$hsum` at the end;
/// the last `n mod $w` products are summed one by one.
macro_rules! dot_kernel {
    ($(#[$attr:meta])* $name:ident: $v:ty, lanes $w:expr, rows $mr:expr, cols $nr:expr,
     zero $zero:expr, load $load:expr, fma $fma:expr, hsum $hsum:expr) => {
        $(#[$attr])*
        pub(super) unsafe fn $name(n: usize, a: *const f32, lda: usize, b: *const f32, ldb: usize, c: *mut f32, ldc: usize) {
            const MR: usize = $mr;
            const NR: usize = $nr;
            const W: usize = $w;
            // SAFETY (whole body): the caller guarantees `a` addresses MR rows of n values lda
            // apart, `b` NR rows of n values ldb apart, and `c` MR rows of NR values ldc apart.
            unsafe {
                let mut acc: [[$v; NR]; MR] = [[$zero(); NR]; MR];
                let whole = n / W * W;
                let mut p = 0;
                while p < whole {
                    let mut av: [$v; MR] = [$zero(); MR];
                    for i in 0..MR {
                        av[i] = $load(a.add(i * lda + p));
                    }
                    for j in 0..NR {
                        let bv = $load(b.add(j * ldb + p));
                        for i in 0..MR {
                            acc[i][j] = $fma(av[i], bv, acc[i][j]);
                        }
                    }
                    p += W;
                }
                for i in 0..MR {
                    for j in 0..NR {
                        let mut s = $hsum(acc[i][j]);
                        for q in whole..n {
                            s += *a.add(i * lda + q) * *b.add(j * ldb + q);
                        }
                        *c.add(i * ldc + j) += s;
                    }
                }
            }
        }
    };
}

/// How many rows of `a` ahead the micro-kernels prefetch (6 KB for `12 x 32`). In a forward
/// the packed weights come from memory, not cache (the whole model's do not stay there
/// between layers), and a conv reads each weight panel once per column block, in the order
/// the panels lie in memory: so prefetching linearly ahead of `a` covers the next panel too.
/// yolov8n, 320 px, batch 1, one thread (interleaved runs, medians): no prefetch 13.3 ms;
/// 16 rows ahead 12.5, 32 rows 12.0, 64 and 128 rows 11.4, 256 rows 11.6.
const PF_K: usize = 128;

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::PF_K;
    use std::arch::x86_64::*;

    /// A hint to bring `p`'s cache line into L1 (never faults, also past an allocation).
    #[inline(always)]
    fn prefetch(p: *const f32) {
        // SAFETY: a prefetch does not access memory architecturally.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(p.cast::<i8>()) }
    }

    micro_kernel! {
        #[target_feature(enable = "avx2,fma")]
        avx2_6x16: __m256, lanes 8, rows 6, vectors 2,
        zero _mm256_setzero_ps, load _mm256_loadu_ps, store _mm256_storeu_ps,
        splat _mm256_set1_ps, fma _mm256_fmadd_ps, add _mm256_add_ps, prefetch prefetch
    }

    micro_kernel! {
        #[target_feature(enable = "avx512f")]
        avx512_12x32: __m512, lanes 16, rows 12, vectors 2,
        zero _mm512_setzero_ps, load _mm512_loadu_ps, store _mm512_storeu_ps,
        splat _mm512_set1_ps, fma _mm512_fmadd_ps, add _mm512_add_ps, prefetch prefetch
    }

    /// The lanes of `v` summed.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn hsum256(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps(s, s, 1)))
    }

    dot_kernel! {
        #[target_feature(enable = "avx2,fma")]
        dot_avx2_3x4: __m256, lanes 8, rows 3, cols 4,
        zero _mm256_setzero_ps, load _mm256_loadu_ps, fma _mm256_fmadd_ps, hsum hsum256
    }

    dot_kernel! {
        #[target_feature(enable = "avx512f")]
        dot_avx512_4x6: __m512, lanes 16, rows 4, cols 6,
        zero _mm512_setzero_ps, load _mm512_loadu_ps, fma _mm512_fmadd_ps, hsum _mm512_reduce_add_ps
    }
}

mod portable {
    use super::PF_K;
    type V8 = [f32; 8];
    type V16 = [f32; 16];

    /// No prefetch hint in the portable kernels.
    #[inline(always)]
    fn no_prefetch(_: *const f32) {}

    fn zero<const W: usize>() -> [f32; W] {
        [0.0; W]
    }
    /// # Safety
    /// `p` addresses `W` readable values.
    unsafe fn load<const W: usize>(p: *const f32) -> [f32; W] {
        // SAFETY: forwarded to the caller.
        unsafe { std::ptr::read_unaligned(p as *const [f32; W]) }
    }
    /// # Safety
    /// `p` addresses `W` writable values.
    unsafe fn store<const W: usize>(p: *mut f32, v: [f32; W]) {
        // SAFETY: forwarded to the caller.
        unsafe { std::ptr::write_unaligned(p as *mut [f32; W], v) }
    }
    fn splat<const W: usize>(x: f32) -> [f32; W] {
        [x; W]
    }
    fn fma<const W: usize>(a: [f32; W], b: [f32; W], c: [f32; W]) -> [f32; W] {
        std::array::from_fn(|l| a[l].mul_add(b[l], c[l]))
    }
    fn add<const W: usize>(a: [f32; W], b: [f32; W]) -> [f32; W] {
        std::array::from_fn(|l| a[l] + b[l])
    }

    micro_kernel! {
        p_6x16: V8, lanes 8, rows 6, vectors 2,
        zero zero::<8>, load load::<8>, store store::<8>, splat splat::<8>, fma fma::<8>, add add::<8>,
        prefetch no_prefetch
    }
    micro_kernel! {
        p_12x32: V16, lanes 16, rows 12, vectors 2,
        zero zero::<16>, load load::<16>, store store::<16>, splat splat::<16>, fma fma::<16>, add add::<16>,
        prefetch no_prefetch
    }

    fn hsum<const W: usize>(v: [f32; W]) -> f32 {
        v.iter().sum()
    }

    dot_kernel! {
        dot_3x4: V8, lanes 8, rows 3, cols 4,
        zero zero::<8>, load load::<8>, fma fma::<8>, hsum hsum::<8>
    }
    dot_kernel! {
        dot_4x6: V16, lanes 16, rows 4, cols 6,
        zero zero::<16>, load load::<16>, fma fma::<16>, hsum hsum::<16>
    }
}

/// A dot-product micro-kernel: an `mr x nr` block of `C += A · Bᵀ` where both `A` (`mr` rows)
/// and `B` (`nr` rows) run along the reduction, contiguous. A conv's weight gradient is such
/// a product (`dW = dY · im2col(X)ᵀ`, both over pixels): with vectors along the pixels
/// neither operand is transposed or packed, and each of the `mr · nr` sums is reduced across
/// its lanes once at the end.
#[derive(Clone, Copy)]
pub struct DotKernel {
    /// Rows of `A` per block.
    pub mr: usize,
    /// Rows of `B` per block.
    pub nr: usize,
    /// What it runs on, for reports.
    pub name: &'static str,
    f: unsafe fn(usize, *const f32, usize, *const f32, usize, *mut f32, usize),
}

impl std::fmt::Debug for DotKernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DotKernel({} {}x{})", self.name, self.mr, self.nr)
    }
}

impl DotKernel {
    /// `c[i·ldc + j] += Σ_{p < n} a[i·lda + p] · b[j·ldb + p]` for `i < mr`, `j < nr`.
    ///
    /// # Safety
    /// `a` must address `mr` rows of `n` values `lda` apart, `b` `nr` rows of `n` values `ldb`
    /// apart, and `c` `mr` rows of `nr` writable values `ldc` apart, not overlapping `a`, `b`.
    #[inline]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn run(&self, n: usize, a: *const f32, lda: usize, b: *const f32, ldb: usize, c: *mut f32, ldc: usize) {
        // SAFETY: forwarded to the caller; `f` was chosen for this CPU by `dot_kernel`.
        unsafe { (self.f)(n, a, lda, b, ldb, c, ldc) }
    }
}

/// `c[i·ldc + j] += Σ_p a[i·lda + p] · b[j·ldb + p]` for any `rows x cols` block (the edges
/// that [`DotKernel`]'s whole blocks leave), with 8 partial sums per dot product.
///
/// # Safety
/// As [`DotKernel::run`] with `rows` and `cols` for `mr` and `nr`.
#[allow(clippy::too_many_arguments)]
pub unsafe fn dot_edge(n: usize, a: *const f32, lda: usize, b: *const f32, ldb: usize, c: *mut f32, ldc: usize, rows: usize, cols: usize) {
    for i in 0..rows {
        for j in 0..cols {
            // SAFETY: rows i of a and j of b hold n values; c[i·ldc + j] is writable.
            unsafe {
                let (ra, rb) = (std::slice::from_raw_parts(a.add(i * lda), n), std::slice::from_raw_parts(b.add(j * ldb), n));
                *c.add(i * ldc + j) += crate::cpu::simd::dot(ra, rb);
            }
        }
    }
}

/// The widest dot-product kernel this CPU runs (AVX-512F `4 x 6`, AVX2 + FMA `3 x 4`),
/// detected once; `None` on other CPUs, where `cpu::conv` uses the `gemm` crate.
pub fn dot_kernel() -> Option<DotKernel> {
    static KERNEL: std::sync::OnceLock<Option<DotKernel>> = std::sync::OnceLock::new();
    *KERNEL.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                return Some(DotKernel { mr: 4, nr: 6, name: "avx512", f: x86::dot_avx512_4x6 });
            }
            if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                return Some(DotKernel { mr: 3, nr: 4, name: "avx2", f: x86::dot_avx2_3x4 });
            }
        }
        None
    })
}

/// The portable dot-product kernels at the AVX2 and AVX-512 block shapes, for the tests.
pub fn portable_dot_kernels() -> [DotKernel; 2] {
    [
        DotKernel { mr: 3, nr: 4, name: "portable", f: portable::dot_3x4 },
        DotKernel { mr: 4, nr: 6, name: "portable", f: portable::dot_4x6 },
    ]
}

/// `A [m, k]` (row-major) packed into `m.div_ceil(mr)` panels of `[k, mr]`, zero rows past
/// `m`: panel `p`'s columns `k0..` start at `(p·k + k0)·mr`.
pub fn pack_a(a: &[f32], m: usize, k: usize, mr: usize) -> Vec<f32> {
    assert_eq!(a.len(), m * k, "pack_a: {} values for [{m}, {k}]", a.len());
    let mut out = vec![0f32; m.div_ceil(mr) * k * mr];
    if k * mr == 0 {
        return out;
    }
    let pack = |(p, panel): (usize, &mut [f32])| pack_a_panel(panel, p, m, k, mr, |row, col| a[row * k + col]);
    // The training step packs every conv's weights afresh: large ones in parallel.
    if m * k >= 1 << 15 {
        use rayon::prelude::*;
        out.par_chunks_exact_mut(k * mr).enumerate().for_each(pack);
    } else {
        out.chunks_exact_mut(k * mr).enumerate().for_each(pack);
    }
    out
}

/// Panel `p` of [`pack_a`]'s layout (`[k, mr]`) for an `[m, k]` matrix given by `at(row,
/// col)`: rows `p·mr..` up to `m`; the panel's rows past `m` are left as they are.
pub(crate) fn pack_a_panel(panel: &mut [f32], p: usize, m: usize, k: usize, mr: usize, at: impl Fn(usize, usize) -> f32) {
    for i in 0..mr.min(m - p * mr) {
        for kk in 0..k {
            panel[kk * mr + i] = at(p * mr + i, kk);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every kernel this CPU has and the portable ones, against a plain triple loop, with and
    /// without accumulation, on a `c` wider than the block (row stride > nr).
    #[test]
    fn kernels_match_reference() {
        let mut kernels = portable_kernels().to_vec();
        kernels.extend(kernel());
        for kern in kernels {
            let (mr, nr) = (kern.mr, kern.nr);
            for (kc, lda, ldb) in [(1, mr, nr), (7, mr, nr), (64, mr, nr), (9, mr + 2, nr + 3)] {
                let a: Vec<f32> = (0..kc * lda).map(|i| ((i * 37) % 101) as f32 / 50.0 - 1.0).collect();
                let b: Vec<f32> = (0..kc * ldb).map(|i| ((i * 53) % 97) as f32 / 40.0 - 1.2).collect();
                let ldc = nr + 5;
                let init: Vec<f32> = (0..mr * ldc).map(|i| i as f32 * 0.01).collect();
                for accumulate in [false, true] {
                    let mut c = init.clone();
                    // SAFETY: sizes as the contract asks.
                    unsafe { kern.run(kc, a.as_ptr(), lda, b.as_ptr(), ldb, c.as_mut_ptr(), ldc, accumulate) };
                    for i in 0..mr {
                        for j in 0..ldc {
                            let got = c[i * ldc + j];
                            if j >= nr {
                                assert_eq!(got, init[i * ldc + j], "{kern:?} wrote outside its block");
                                continue;
                            }
                            let mut want = if accumulate { init[i * ldc + j] as f64 } else { 0.0 };
                            for k in 0..kc {
                                want += a[k * lda + i] as f64 * b[k * ldb + j] as f64;
                            }
                            assert!((got as f64 - want).abs() < 1e-4 * (1.0 + want.abs()), "{kern:?} kc {kc} [{i}, {j}]: {got} vs {want}");
                        }
                    }
                }
            }
        }
    }

    /// Segments: the same sums as one call per segment added up.
    #[test]
    fn segments_match_separate_calls() {
        let mut kernels = portable_kernels().to_vec();
        kernels.extend(kernel());
        for kern in kernels {
            let (mr, nr, kc, ldb) = (kern.mr, kern.nr, 5, kern.nr + 7);
            let segs = [3usize, 0, 40];
            let a: Vec<f32> = (0..segs.len() * kc * mr).map(|i| ((i * 31) % 89) as f32 / 40.0 - 1.0).collect();
            let b: Vec<f32> = (0..40 + kc * ldb).map(|i| ((i * 17) % 83) as f32 / 30.0 - 1.3).collect();
            let mut one = vec![0f32; mr * nr];
            let mut each = vec![0f32; mr * nr];
            // SAFETY: a holds 3·kc rows of mr; every segment's kc rows of nr fit in b.
            unsafe {
                kern.run_segments(&segs, kc, a.as_ptr(), mr, b.as_ptr(), ldb, one.as_mut_ptr(), nr, false);
                for (s, &off) in segs.iter().enumerate() {
                    kern.run(kc, a[s * kc * mr..].as_ptr(), mr, b[off..].as_ptr(), ldb, each.as_mut_ptr(), nr, s > 0);
                }
            }
            for (x, y) in one.iter().zip(&each) {
                assert!((x - y).abs() <= 1e-5 * (1.0 + y.abs()), "{kern:?}: {x} vs {y}");
            }
        }
    }

    /// Every dot-product kernel this CPU has and the portable ones, against a plain loop,
    /// with a tail (n not a multiple of the lanes), and the edge function on a partial block.
    #[test]
    fn dot_kernels_match_reference() {
        let mut kernels = portable_dot_kernels().to_vec();
        kernels.extend(dot_kernel());
        for kern in kernels {
            let (mr, nr) = (kern.mr, kern.nr);
            for n in [5, 16, 77] {
                let (lda, ldb, ldc) = (n + 3, n + 1, nr + 2);
                let a: Vec<f32> = (0..mr * lda).map(|i| ((i * 37) % 101) as f32 / 50.0 - 1.0).collect();
                let b: Vec<f32> = (0..nr * ldb).map(|i| ((i * 53) % 97) as f32 / 40.0 - 1.2).collect();
                let init: Vec<f32> = (0..mr * ldc).map(|i| i as f32 * 0.01).collect();
                let want = |i: usize, j: usize| init[i * ldc + j] as f64 + (0..n).map(|p| a[i * lda + p] as f64 * b[j * ldb + p] as f64).sum::<f64>();
                let mut c = init.clone();
                // SAFETY: sizes as the contract asks.
                unsafe { kern.run(n, a.as_ptr(), lda, b.as_ptr(), ldb, c.as_mut_ptr(), ldc) };
                let mut e = init.clone();
                // SAFETY: a partial block inside the same buffers.
                unsafe { dot_edge(n, a.as_ptr(), lda, b.as_ptr(), ldb, e.as_mut_ptr(), ldc, mr - 1, nr - 1) };
                for i in 0..mr {
                    for j in 0..ldc {
                        if j >= nr {
                            assert_eq!(c[i * ldc + j], init[i * ldc + j], "{kern:?} wrote outside its block");
                            continue;
                        }
                        let w = want(i, j);
                        assert!((c[i * ldc + j] as f64 - w).abs() < 1e-4 * (1.0 + w.abs()), "{kern:?} n {n} [{i}, {j}]");
                        let w_edge = if i < mr - 1 && j < nr - 1 { w } else { init[i * ldc + j] as f64 };
                        assert!((e[i * ldc + j] as f64 - w_edge).abs() < 1e-4 * (1.0 + w_edge.abs()), "dot_edge n {n} [{i}, {j}]");
                    }
                }
            }
        }
    }

    #[test]
    fn packs_panels_with_zero_rows() {
        let a: Vec<f32> = (0..5 * 3).map(|i| i as f32).collect();
        let p = pack_a(&a, 5, 3, 4);
        assert_eq!(p.len(), 2 * 3 * 4);
        // Panel 0, column 1: rows 0..4 of column 1.
        assert_eq!(&p[4..8], &[1.0, 4.0, 7.0, 10.0]);
        // Panel 1, column 2: row 4, then zeros.
        assert_eq!(&p[12 + 8..12 + 12], &[14.0, 0.0, 0.0, 0.0]);
    }
}
