//! Convolution + bias + SiLU for inference on the `flex` CPU backend.
//!
//! Burn's `flex` conv (0.22.1) runs each 3x3 conv as: re-lay the weights, copy the whole input
//! to NHWC on one thread, zero-fill a column buffer per tile, multiply into a fresh buffer,
//! scatter that into the output, then add the bias in another pass; the SiLU is one pass
//! more. Its 3-channel stem takes a scalar path (see `docs/cpu-conv-notes.md`).
//!
//! [`conv2d`] does the same arithmetic with our own GEMM micro-kernels
//! ([`gemm_kernel`], AVX2 + FMA or AVX-512F, picked at run time):
//! - the weights are packed once into the kernel's row panels and kept by the module that
//!   owns the conv ([`PackCache`]);
//! - convs larger than 1x1 with stride 1 or 2 and at least 16 input channels read the
//!   zero-padded input, split into its stride phases, in place: one kernel call sums all
//!   taps of a block of channels in registers (`packed::run_packed_shifted`); the others (1x1,
//!   the 3-channel stem) pack their im2col columns straight into the kernel's panels
//!   (`packed::run_packed`);
//! - sums go to a per-task accumulator, and bias + SiLU are applied as it is copied to the
//!   NCHW output.
//!
//! CPUs without AVX2 keep the `gemm` crate (which `flex` itself uses) with im2col or shifted
//! GEMMs ([`Method::Im2col`], [`Method::Shifted`]). Tasks of all images run in parallel on
//! rayon's pool, each kernel single-threaded, so both cores stay busy without nested
//! parallelism. Only for plain (non-autodiff) f32 tensors on `flex`; training reaches the
//! same kernels through `ops::conv`.

use burn::nn::conv::Conv2d;
use burn::nn::PaddingConfig2d;
use burn::tensor::{DType, Device, Tensor};
use burn_flex::FlexTensor;
use rayon::prelude::*;
use std::cell::RefCell;

use super::flex::{flex_f32, flex_tensor, is_flex, par_fill, par_init, par_zeroed, OutPtr};
use super::gemm_kernel::{self, DotKernel, Kernel};
use super::simd::{bias_silu_slice, bias_slice, silu_slice};

mod packed;
pub use packed::PackCache;
use packed::{grad_weight_dot, pack_weights, run_packed_any, run_packed_parts, Plan};

/// What is applied to each output after the bias.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// The conv's output as it is (with its bias).
    Identity,
    /// `silu(conv(x) + b)`.
    Silu,
}

/// Column-block size, in floats (256 KB): the gathered `[K, n]` block of a tile stays in L2.
const COL_BLOCK_FLOATS: usize = 64 * 1024;

/// Geometry of one conv call.
#[derive(Clone, Copy, Debug)]
pub struct Geometry {
    c_in: usize,
    c_out: usize,
    h: usize,
    w: usize,
    kh: usize,
    kw: usize,
    sh: usize,
    sw: usize,
    ph: usize,
    pw: usize,
    oh: usize,
    ow: usize,
}

impl Geometry {
    /// From `[C_in, C_out]`, the input's `[H, W]`, kernel, stride and (symmetric) padding.
    pub fn new(
        [c_in, c_out]: [usize; 2],
        [h, w]: [usize; 2],
        [kh, kw]: [usize; 2],
        [sh, sw]: [usize; 2],
        [ph, pw]: [usize; 2],
    ) -> Self {
        assert!(sh > 0 && sw > 0, "conv stride must be positive, got [{sh}, {sw}]");
        assert!(
            kh > 0 && kw > 0 && kh <= h + 2 * ph && kw <= w + 2 * pw,
            "conv kernel [{kh}, {kw}] does not fit the padded input [{}, {}]",
            h + 2 * ph,
            w + 2 * pw
        );
        Self {
            c_in,
            c_out,
            h,
            w,
            kh,
            kw,
            sh,
            sw,
            ph,
            pw,
            oh: (h + 2 * ph - kh) / sh + 1,
            ow: (w + 2 * pw - kw) / sw + 1,
        }
    }

    /// Panics unless the buffers hold `[batch, C_in, H, W]` inputs, `[C_out, C_in, kh, kw]`
    /// weights, `[batch, C_out, oh, ow]` output gradients and `[C_out]` biases: the kernels
    /// hand raw pointers to the GEMM.
    fn check(&self, batch: usize, x: Option<&[f32]>, w: Option<&[f32]>, dy: Option<&[f32]>, bias: Option<&[f32]>) {
        let sizes = [
            ("input", x, batch * self.c_in * self.h * self.w),
            ("weight", w, self.c_out * self.k()),
            ("output gradient", dy, batch * self.c_out * self.oh * self.ow),
            ("bias", bias, self.c_out),
        ];
        for (what, buf, want) in sizes {
            if let Some(buf) = buf {
                assert_eq!(buf.len(), want, "conv {what}: {} values for {self:?}, batch {batch}", buf.len());
            }
        }
    }

    /// The output's `[oh, ow]`.
    pub fn out_hw(&self) -> [usize; 2] {
        [self.oh, self.ow]
    }

    fn k(&self) -> usize {
        self.c_in * self.kh * self.kw
    }
    /// Shifted `gemm`-crate GEMMs ([`run_shifted`]) for stride-1 convs with at least 64 input
    /// channels, on CPUs without our micro-kernels: measured per layer (`conv-layers`), they
    /// beat im2col there and lose below, where each tap's GEMM is too thin (K = C_in).
    fn uses_shifted(&self) -> bool {
        self.sh == 1 && self.sw == 1 && !self.is_pointwise() && self.c_in >= 64
    }
    fn is_pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.sh == 1 && self.sw == 1 && self.ph == 0 && self.pw == 0
    }
}

/// Whether [`conv2d`] takes its fast path for tensors on `device`.
pub fn supported_device(device: &Device) -> bool {
    !device.is_autodiff() && is_flex(device)
}

/// `act(conv(x) + bias)` with `conv`'s weights, stride and padding.
///
/// Returns `Err(x)` (the input, untouched) when the fast path does not apply: not `flex`,
/// autodiff, not f32, groups or dilation other than 1, asymmetric or `Same` padding. The
/// caller then runs Burn's conv.
///
/// # Shapes
/// - `x`: `[B, C_in, H, W]`
/// - output: `[B, C_out, (H + 2p - k) / s + 1, (W + 2p - k) / s + 1]`
pub fn conv2d(x: Tensor<4>, conv: &Conv2d, act: Activation) -> Result<Tensor<4>, Tensor<4>> {
    conv2d_with(x, conv, act, Method::Auto, None)
}

/// [`conv2d`] that keeps the weights packed for the micro-kernels in `cache` between calls
/// (the module that owns `conv` owns the cache; see [`PackCache`]).
///
/// # Shapes
/// As [`conv2d`].
pub fn conv2d_cached(x: Tensor<4>, conv: &Conv2d, act: Activation, cache: &PackCache) -> Result<Tensor<4>, Tensor<4>> {
    conv2d_with(x, conv, act, Method::Auto, Some(cache))
}

/// [`conv2d_cached`] of the concatenation of `xs` along channels, for a 1x1 stride-1 conv
/// (C2f's and SPPF's `cv2`, the neck's C2f `cv1`) on our micro-kernels: the kernel's column
/// panels are packed straight from each part, so the concatenated tensor is never built (at
/// 640 that was ~30 MB of copies per yolov8n forward, on one thread).
///
/// Returns `Err(xs)` (untouched) where this does not apply: another conv, a CPU without the
/// micro-kernels, or inputs [`conv2d`] would refuse; the caller then concatenates.
///
/// # Shapes
/// - `xs`: `[B, C_i, H, W]` with `Σ C_i = C_in`; output `[B, C_out, H, W]`
pub fn conv2d_cat_cached(xs: Vec<Tensor<4>>, conv: &Conv2d, act: Activation, cache: &PackCache) -> Result<Tensor<4>, Vec<Tensor<4>>> {
    let Some(kern) = gemm_kernel::kernel() else { return Err(xs) };
    let Some(first) = xs.first() else { return Err(xs) };
    let [b, _, h, w] = first.dims();
    let [c_out, c_in, kh, kw] = conv.weight.dims();
    let pointwise = [kh, kw, conv.stride[0], conv.stride[1]] == [1; 4]
        && conv.groups == 1
        && conv.dilation == [1, 1]
        && matches!(conv.padding, PaddingConfig2d::Valid | PaddingConfig2d::Explicit(0, 0, 0, 0));
    let fits = xs.iter().all(|x| {
        let [xb, _, xh, xw] = x.dims();
        supported_device(&x.device()) && x.dtype() == DType::F32 && [xb, xh, xw] == [b, h, w]
    });
    if !pointwise || !fits || xs.iter().map(|x| x.dims()[1]).sum::<usize>() != c_in {
        return Err(xs);
    }
    let g = Geometry::new([c_in, c_out], [h, w], [1, 1], [1, 1], [0, 0]);
    let Some(weight) = flex_f32(conv.weight.val()) else { return Err(xs) };
    let Some(bias) = conv_bias(conv) else { return Err(xs) };
    let channels: Vec<usize> = xs.iter().map(|x| x.dims()[1]).collect();
    let inputs: Vec<FlexTensor> = xs.into_iter().map(|x| flex_f32(x).expect("flex f32 (checked)")).collect();
    let parts: Vec<(&[f32], usize)> = inputs.iter().zip(channels).map(|(t, c)| (t.as_slice::<f32>().expect("contiguous f32"), c)).collect();
    let bs = bias.as_ref().map(|t| t.as_slice::<f32>().expect("contiguous f32"));
    g.check(b, None, weight.as_slice::<f32>(), None, bs);
    let a = cache.get(&weight, &g, kern.mr, Plan::Im2col);
    let out = if b * c_out * h * w == 0 { Vec::new() } else { run_packed_parts(&g, b, &parts, &a, bs, act, kern) };
    Ok(flex_tensor(out, [b, c_out, h, w]))
}

/// The conv's bias as a contiguous f32 `flex` tensor (`Some(None)` without a bias), or `None`
/// when it has one that is not on `flex` or not f32.
fn conv_bias(conv: &Conv2d) -> Option<Option<FlexTensor>> {
    match &conv.bias {
        Some(p) => flex_f32(p.val()).map(Some),
        None => Some(None),
    }
}

/// How [`conv2d_with`] lays out the work.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// What [`conv2d`] does: our packed micro-kernels ([`gemm_kernel`]) where the CPU has
    /// AVX2 + FMA or AVX-512F (Winograd `F(2x2, 3x3)` for 3x3 stride-1 convs, the padded
    /// input read in place for other convs larger than 1x1, im2col fused into the packing for
    /// the rest); elsewhere the `gemm` crate with shifted GEMMs for stride-1 convs and im2col
    /// for the rest.
    Auto,
    /// [`Method::Auto`] without Winograd: every conv by direct summation (what the Winograd
    /// path is measured and tested against); for `dW`, also without the batch-spanning dot
    /// products (`packed::grad_weight_batch_dot`), so the per-image paths stay measurable.
    Direct,
    /// im2col + one `gemm`-crate GEMM for every conv.
    Im2col,
    /// Shifted `gemm`-crate GEMMs for every stride-1 conv that is not 1x1, im2col for the rest.
    Shifted,
}

/// `conv`'s `[ph, pw]` padding on an input of `dims` when this crate's convs take it: groups
/// and dilation 1, no or symmetric explicit padding, stride >= 1, the weight's input channels
/// equal to the input's, a kernel that fits the padded input; `None` otherwise.
pub fn plain_padding([_, c_in, h, w]: [usize; 4], conv: &Conv2d) -> Option<[usize; 2]> {
    if conv.groups != 1 || conv.dilation != [1, 1] {
        return None;
    }
    let [ph, pw] = match conv.padding {
        PaddingConfig2d::Valid => [0, 0],
        PaddingConfig2d::Explicit(t, l, b, r) if t == b && l == r => [t, l],
        _ => return None,
    };
    let [_, wc_in, kh, kw] = conv.weight.dims();
    let [sh, sw] = conv.stride;
    (wc_in == c_in && h + 2 * ph >= kh && w + 2 * pw >= kw && sh > 0 && sw > 0).then_some([ph, pw])
}

/// [`conv2d`] with an explicit [`Method`], and a cache of packed weights when given.
pub fn conv2d_with(x: Tensor<4>, conv: &Conv2d, act: Activation, method: Method, cache: Option<&PackCache>) -> Result<Tensor<4>, Tensor<4>> {
    if !supported_device(&x.device()) || x.dtype() != DType::F32 {
        return Err(x);
    }
    let Some([ph, pw]) = plain_padding(x.dims(), conv) else {
        return Err(x);
    };
    let [b, c_in, h, w] = x.dims();
    let [c_out, _, kh, kw] = conv.weight.dims();
    let [sh, sw] = conv.stride;
    let g = Geometry::new([c_in, c_out], [h, w], [kh, kw], [sh, sw], [ph, pw]);

    let Some(weight) = flex_f32(conv.weight.val()) else {
        return Err(x);
    };
    let Some(bias) = conv_bias(conv) else { return Err(x) };
    let Some(input) = flex_f32(x.clone()) else {
        return Err(x);
    };
    drop(x);

    let (Some(xs), Some(ws)) = (input.as_slice::<f32>(), weight.as_slice::<f32>()) else {
        unreachable!("flex_f32 returns contiguous f32 tensors")
    };
    let bs = bias.as_ref().map(|t| t.as_slice::<f32>().expect("contiguous f32"));
    // With a cache, the packed weights come from it; `forward` packs them itself otherwise.
    let out = match (method, cache, gemm_kernel::kernel()) {
        (Method::Auto | Method::Direct, Some(cache), Some(kern)) => {
            g.check(b, Some(xs), Some(ws), None, bs);
            let plan = Plan::of(&g, method == Method::Auto);
            run_packed_any(&g, b, xs, &cache.get(&weight, &g, kern.mr, plan), bs, act, kern, plan)
        }
        _ => forward(&g, b, xs, ws, bs, act, method),
    };
    Ok(flex_tensor(out, [b, c_out, g.oh, g.ow]))
}

/// `act(conv(x) + bias)` over raw NCHW buffers with geometry `g`; returns the NCHW output.
pub fn forward(
    g: &Geometry,
    batch: usize,
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    act: Activation,
    method: Method,
) -> Vec<f32> {
    g.check(batch, Some(x), Some(w), None, bias);
    let shifted = match method {
        Method::Auto | Method::Direct => g.uses_shifted(),
        Method::Im2col => false,
        Method::Shifted => g.sh == 1 && g.sw == 1 && !g.is_pointwise(),
    };
    if matches!(method, Method::Auto | Method::Direct) {
        if let Some(kern) = gemm_kernel::kernel() {
            let plan = Plan::of(g, method == Method::Auto);
            return run_packed_any(g, batch, x, &pack_weights(g, w, kern.mr, plan), bias, act, kern, plan);
        }
    }
    if shifted {
        run_shifted(g, batch, x, w, bias, act)
    } else {
        run(g, batch, x, w, bias, act)
    }
}

/// Gradient of the conv's input, `dX = conv2d_transpose(dY, W)`.
///
/// Stride 1 is a conv of `dY` with the flipped, transposed kernel and padding `k - 1 - p`, run
/// by [`forward`]. Other strides multiply `Wᵀ·dY` into column blocks and add them back into
/// `dX` (col2im), in tasks over (image, block of input channels) that own their planes: on our
/// micro-kernels band by band (`packed::grad_input_col2im`) for outputs of 16x16 pixels and
/// more, else on the `gemm` crate.
///
/// # Shapes
/// - `dy`: `[B, C_out, oh, ow]`, `w`: `[C_out, C_in, kh, kw]`; output `[B, C_in, H, W]`
pub fn grad_input(g: &Geometry, batch: usize, dy: &[f32], w: &[f32]) -> Vec<f32> {
    g.check(batch, None, Some(w), Some(dy), None);
    let (kh, kw, khw) = (g.kh, g.kw, g.kh * g.kw);
    if g.sh == 1 && g.sw == 1 && g.ph < kh && g.pw < kw && g.oh + kh - 1 == g.h + 2 * g.ph {
        let gt = Geometry::new([g.c_out, g.c_in], [g.oh, g.ow], [kh, kw], [1, 1], [kh - 1 - g.ph, kw - 1 - g.pw]);
        debug_assert_eq!((gt.oh, gt.ow), (g.h, g.w));
        let mut wt = vec![0f32; w.len()];
        for co in 0..g.c_out {
            for ci in 0..g.c_in {
                for t in 0..khw {
                    wt[(ci * g.c_out + co) * khw + (khw - 1 - t)] = w[(co * g.c_in + ci) * khw + t];
                }
            }
        }
        return forward(&gt, batch, dy, &wt, None, Activation::Identity, Method::Auto);
    }
    // Measured (`conv-layers --backward`, yolov8n at 320, batch 8, one thread): 1.4-2.6x
    // faster than the `gemm` crate path on the stride-2 convs with 20x20 outputs and larger,
    // 10% slower on 10x10 ones (a 32-pixel panel holds 4 of a map's last pixels).
    if g.oh * g.ow >= 256 {
        if let Some(kern) = gemm_kernel::kernel() {
            return packed::grad_input_col2im(g, batch, dy, w, kern);
        }
    }
    grad_input_gemm(g, batch, dy, w)
}

/// The col2im `dX` of [`grad_input`] on the `gemm` crate (CPUs without our micro-kernels; the
/// tests' reference for [`packed::grad_input_col2im`]).
fn grad_input_gemm(g: &Geometry, batch: usize, dy: &[f32], w: &[f32]) -> Vec<f32> {
    let (kw, khw) = (g.kw, g.kh * g.kw);
    let (hw_in, hw) = (g.h * g.w, g.oh * g.ow);
    let k = g.k();
    // Input channels per task: the column block stays around COL_BLOCK_FLOATS, and blocks
    // divide C_in so that no task straddles two images.
    let mut cib = (COL_BLOCK_FLOATS / (khw * hw).max(1)).clamp(1, g.c_in);
    while g.c_in % cib != 0 {
        cib -= 1;
    }
    let blocks = g.c_in.div_ceil(cib);
    let mut dx = par_zeroed(batch * g.c_in * hw_in);
    dx.par_chunks_mut(cib * hw_in).enumerate().for_each(|(task, dst)| {
        let (img, blk) = (task / blocks, task % blocks);
        let ci0 = blk * cib;
        let nci = dst.len() / hw_in;
        let rows = nci * khw;
        let mut cols = vec![0f32; rows * hw];
        // cols[r, p] = Σ_co w[co, ci0·khw + r] · dy[img, co, p]
        // SAFETY: cols is [rows, hw]; lhs element (r, co) is w[co * k + ci0 * khw + r] and rhs
        // element (co, p) is dy[(img * c_out + co) * hw + p], all in bounds.
        unsafe {
            sgemm(
                rows,
                hw,
                g.c_out,
                cols.as_mut_ptr(),
                1,
                hw as isize,
                false,
                w[ci0 * khw..].as_ptr(),
                k as isize,
                1,
                dy[img * g.c_out * hw..].as_ptr(),
                1,
                hw as isize,
            )
        }
        for (r, col) in cols.chunks_exact(hw).enumerate() {
            let (ci, t) = (r / khw, r % khw);
            let (ky, kx) = (t / kw, t % kw);
            let plane = &mut dst[ci * hw_in..(ci + 1) * hw_in];
            for oy in 0..g.oh {
                let iy = (oy * g.sh + ky) as isize - g.ph as isize;
                if iy < 0 || iy >= g.h as isize {
                    continue;
                }
                let row = &mut plane[iy as usize * g.w..(iy as usize + 1) * g.w];
                for ox in 0..g.ow {
                    let ix = (ox * g.sw + kx) as isize - g.pw as isize;
                    if ix >= 0 && ix < g.w as isize {
                        row[ix as usize] += col[oy * g.ow + ox];
                    }
                }
            }
        }
    });
    dx
}

/// Gradient of the conv's weight, `dW[co, (ci, ky, kx)] = Σ_images Σ_pixels dY · im2col(X)`:
/// Winograd `F(3x3, 2x2)` on the dot-product micro-kernels for 3x3 stride-1 convs with padding 1
/// (`packed::winograd_grad`), else for convs other than plain 1x1 ones with a small `dY` the dot-product
/// micro-kernels along all images' pixels at once (`packed::grad_weight_batch_dot`), else
/// dot-product micro-kernels over `dY` rows and im2col rows (`packed::grad_weight_dot`) for convs
/// larger than 1x1 with at least 16x16 output pixels, else one `gemm`-crate GEMM per (image,
/// pixel tile) accumulating into a per-task `[C_out, K]` block, the blocks summed at the end.
///
/// # Shapes
/// - `x`: `[B, C_in, H, W]`, `dy`: `[B, C_out, oh, ow]`; output `[C_out, C_in, kh, kw]`
pub fn grad_weight(g: &Geometry, batch: usize, x: &[f32], dy: &[f32]) -> Vec<f32> {
    grad_weight_with(g, batch, x, dy, Method::Auto)
}

/// [`grad_weight`] with an explicit [`Method`]: `Auto` as [`grad_weight`]; `Direct` as `Auto`
/// without Winograd (what it is measured and tested against); `Shifted` runs one
/// GEMM per kernel tap over the zero-padded input for stride-1 convs that are not 1x1;
/// `Im2col` one GEMM per pixel tile. Measured per layer (`conv-layers --backward`, yolov8n at 320, batch 8, both
/// cores), the per-tap GEMMs were slower on every layer at 20x20 and above (9 long tasks per
/// layer balance badly over the threads) and only level with im2col at 10x10.
pub fn grad_weight_with(g: &Geometry, batch: usize, x: &[f32], dy: &[f32], method: Method) -> Vec<f32> {
    g.check(batch, Some(x), None, Some(dy), None);
    if batch * g.c_out * g.oh * g.ow == 0 {
        return vec![0.0; g.c_out * g.k()];
    }
    // The dot-product kernels where they were measured faster (`conv-layers --backward`,
    // yolov8n at 320, batch 8): convs larger than 1x1 whose output has at least 16x16 pixels
    // (10-20% less time). On 1x1 convs and small maps the gemm crate's packed GEMM was up to 2x
    // faster: short dot products pay their final reductions too often.
    // Winograd `F(3x3, 2x2)` for 3x3 stride-1 convs (`packed::winograd_grad`: 16 multiply-adds
    // per 2x2 output pixels instead of 36), on the dot-product kernels.
    if method == Method::Auto && packed::winograd_grad::pays(g, batch) {
        if let Some(kern) = gemm_kernel::dot_kernel() {
            return packed::winograd_grad::grad_weight(g, batch, x, dy, kern);
        }
    }
    // Small maps of convs other than plain 1x1 ones (`is_pointwise`: 1x1, stride 1, no
    // padding): the dot products along all images' pixels at once (`grad_weight_batch_dot`,
    // where it was measured faster).
    if method == Method::Auto && !g.is_pointwise() && batch * g.c_out * g.oh * g.ow <= packed::BATCH_DOT_FLOATS {
        if let Some(kern) = gemm_kernel::dot_kernel() {
            return packed::grad_weight_batch_dot(g, batch, x, dy, kern);
        }
    }
    if matches!(method, Method::Auto | Method::Direct) && !g.is_pointwise() && g.oh * g.ow >= 256 {
        if let Some(kern) = gemm_kernel::dot_kernel() {
            return grad_weight_dot(g, batch, x, dy, kern);
        }
    }
    if method == Method::Shifted && g.sh == 1 && g.sw == 1 && !g.is_pointwise() {
        return grad_weight_shifted(g, batch, x, dy);
    }
    let (hw_in, hw) = (g.h * g.w, g.oh * g.ow);
    let k = g.k();
    let n_tile = tile_len(g, batch);
    let tiles_per_image = hw.div_ceil(n_tile);
    grouped_sum(batch * tiles_per_image, g.c_out * k, || (), |task, _, acc| {
        let (img, tile) = (task / tiles_per_image, task % tiles_per_image);
        let p0 = tile * n_tile;
        let n = n_tile.min(hw - p0);
        let x_img = &x[img * g.c_in * hw_in..(img + 1) * g.c_in * hw_in];
        let lhs = dy[(img * g.c_out) * hw + p0..].as_ptr();
        let dst = acc.as_mut_ptr();
        // acc[co, kk] += Σ_j dy[img, co, p0 + j] · rhs[j, kk], rhs[j, kk] = cols[kk, j].
        let gemm = |rhs: *const f32, rhs_cs: isize| unsafe {
            // SAFETY: acc is [c_out, k]; lhs element (co, j) is dy[(img * c_out + co) *
            // hw + p0 + j]; rhs element (j, kk) is rhs[kk * rhs_cs + j]; all in bounds.
            sgemm(
                g.c_out,
                k,
                n,
                dst,
                1,
                k as isize,
                true,
                lhs,
                1,
                hw as isize,
                rhs,
                rhs_cs,
                1,
            )
        };
        with_columns(g, x_img, p0, n, gemm);
    })
}

/// `Σ_task` of what `f(task, scratch, acc)` adds into a zeroed block of `size` values,
/// reproducibly: the tasks are cut into a fixed number of consecutive groups (whichever thread
/// runs them), each summed in order into its own block (with its own `scratch()`), and the
/// blocks are added in order, so a seed reproduces a training run bit for bit on a given
/// machine.
fn grouped_sum<S>(tasks: usize, size: usize, scratch: impl Fn() -> S + Sync, f: impl Fn(usize, &mut S, &mut [f32]) + Sync) -> Vec<f32> {
    let groups = tasks.clamp(1, 16);
    let per_group = tasks.div_ceil(groups);
    let partials: Vec<Vec<f32>> = (0..groups)
        .into_par_iter()
        .map(|grp| {
            let mut acc = vec![0f32; size];
            let mut s = scratch();
            for task in grp * per_group..((grp + 1) * per_group).min(tasks) {
                f(task, &mut s, &mut acc);
            }
            acc
        })
        .collect();
    let mut partials = partials.into_iter();
    let mut dw = partials.next().unwrap_or_else(|| vec![0f32; size]);
    let rest: Vec<Vec<f32>> = partials.collect();
    dw.par_chunks_mut(1 << 12).enumerate().for_each(|(i, chunk)| {
        let o = i << 12;
        for p in &rest {
            let n = chunk.len();
            chunk.iter_mut().zip(&p[o..o + n]).for_each(|(a, b)| *a += b);
        }
    });
    dw
}

/// `dW` of a stride-1 conv as one GEMM per kernel tap: with `Xp` the zero-padded input
/// (row length `wp = W + 2·pw`) and `dYw` the output gradient widened to rows of `wp` (zeros
/// past `ow`), `dW[co, ci, ky, kx] = Σ_images Σ_q dYw[co, q] · Xp[ci, q + ky·wp + kx]`: a
/// `[C_out, C_in]` GEMM whose reduction runs over the whole image, with no im2col. Tasks
/// are (tap, block of output channels); each sums its images in order, so the result does
/// not depend on which thread runs what.
fn grad_weight_shifted(g: &Geometry, batch: usize, x: &[f32], dy: &[f32]) -> Vec<f32> {
    let (hp, wp) = (g.h + 2 * g.ph, g.w + 2 * g.pw);
    let (plane, hw, taps) = (hp * wp, g.oh * g.ow, g.kh * g.kw);
    let plane_y = g.oh * wp;
    // Reduction length per image: the last row stops at its last real column, so no tap reads
    // past the end of the padded plane.
    let q_len = (g.oh - 1) * wp + g.ow;
    let padded = pad_planes(g, batch, x);
    let mut dyw = par_zeroed(batch * g.c_out * plane_y);
    dyw.par_chunks_mut(plane_y).zip(dy.par_chunks(hw)).for_each(|(dst, src)| {
        for (row, src) in dst.chunks_exact_mut(wp).zip(src.chunks_exact(g.ow)) {
            row[..g.ow].copy_from_slice(src);
        }
    });
    let threads = rayon::current_num_threads().max(1);
    let co_blocks = (8 * threads).div_ceil(taps).clamp(1, (g.c_out / 16).max(1));
    let co_per = g.c_out.div_ceil(co_blocks);
    let mut dw: Vec<f32> = vec![0f32; g.c_out * g.c_in * taps];
    let dst = OutPtr(dw.as_mut_ptr());
    (0..taps * co_blocks).into_par_iter().for_each(|task| {
        let dst = dst;
        let (t, blk) = (task / co_blocks, task % co_blocks);
        let co0 = blk * co_per;
        let m = co_per.min(g.c_out.saturating_sub(co0));
        if m == 0 {
            return;
        }
        let off = (t / g.kw) * wp + t % g.kw;
        for img in 0..batch {
            let lhs = &dyw[(img * g.c_out + co0) * plane_y..];
            let rhs = &padded[img * g.c_in * plane + off..];
            debug_assert!((g.c_in - 1) * plane + q_len <= rhs.len());
            // SAFETY: dst element (co, ci) is dw[((co0 + co) * c_in + ci) * taps + t], which only
            // this task writes; lhs element (co, q) is dyw[(img * c_out + co0 + co) * plane_y +
            // q] and rhs element (q, ci) is padded[(img * c_in + ci) * plane + off + q], all in
            // bounds (q < q_len; checked above).
            unsafe {
                sgemm(
                    m,
                    g.c_in,
                    q_len,
                    dst.0.add(co0 * g.c_in * taps + t),
                    taps as isize,
                    (g.c_in * taps) as isize,
                    img > 0,
                    lhs.as_ptr(),
                    1,
                    plane_y as isize,
                    rhs.as_ptr(),
                    plane as isize,
                    1,
                )
            }
        }
    });
    dw
}

/// The input's planes zero-padded by `(ph, pw)`: `[B·C_in, H + 2·ph, W + 2·pw]` (borrowed
/// when there is no padding).
fn pad_planes<'a>(g: &Geometry, batch: usize, x: &'a [f32]) -> std::borrow::Cow<'a, [f32]> {
    if g.ph == 0 && g.pw == 0 {
        return std::borrow::Cow::Borrowed(x);
    }
    let wp = g.w + 2 * g.pw;
    let plane = (g.h + 2 * g.ph) * wp;
    let mut v = par_zeroed(batch * g.c_in * plane);
    v.par_chunks_mut(plane).zip(x.par_chunks(g.h * g.w)).for_each(|(dst, src)| {
        for (y, row) in src.chunks_exact(g.w).enumerate() {
            let o = (y + g.ph) * wp + g.pw;
            dst[o..o + g.w].copy_from_slice(row);
        }
    });
    std::borrow::Cow::Owned(v)
}

thread_local! {
    /// Per-thread column block, reused across tiles and calls.
    static COLS: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Pixels per tile: the column block fits [`COL_BLOCK_FLOATS`], and there are at least two
/// tiles per rayon thread in all when the layer is large enough to split.
fn tile_len(g: &Geometry, batch: usize) -> usize {
    let hw = g.oh * g.ow;
    let threads = rayon::current_num_threads().max(1);
    let mut n = if g.is_pointwise() { hw } else { (COL_BLOCK_FLOATS / g.k()).max(64) };
    n = n.min(hw);
    let tiles = batch * hw.div_ceil(n);
    if tiles < 2 * threads {
        let per_image = (2 * threads).div_ceil(batch);
        n = hw.div_ceil(per_image).max(32).min(hw);
    }
    // Whole SIMD registers for the epilogue and the GEMM's columns.
    if n < hw {
        n = n.div_ceil(16) * 16;
    }
    n.min(hw)
}

/// `dst = lhs · rhs`, or `dst += lhs · rhs` with `accumulate`: `[m, k] · [k, n]` f32 matrices
/// given by pointer and (column, row) strides, on the calling thread (callers parallelise
/// over tiles).
///
/// # Safety
/// Every element the shapes and strides address must be in bounds, and `dst` must not
/// overlap `lhs` or `rhs`.
#[allow(clippy::too_many_arguments)]
unsafe fn sgemm(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_cs: isize,
    dst_rs: isize,
    accumulate: bool,
    lhs: *const f32,
    lhs_cs: isize,
    lhs_rs: isize,
    rhs: *const f32,
    rhs_cs: isize,
    rhs_rs: isize,
) {
    // With `read_dst`, the gemm crate computes dst = alpha·dst + beta·lhs·rhs.
    let alpha = if accumulate { 1.0f32 } else { 0.0 };
    // SAFETY: forwarded to the caller.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            dst_cs,
            dst_rs,
            accumulate,
            lhs,
            lhs_cs,
            lhs_rs,
            rhs,
            rhs_cs,
            rhs_rs,
            alpha,
            1.0f32,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
}

/// Bias and activation over one output row, in place.
#[inline]
fn epilogue(row: &mut [f32], bias: Option<f32>, act: Activation) {
    match (act, bias) {
        (Activation::Silu, Some(b)) => bias_silu_slice(row, b),
        (Activation::Silu, None) => silu_slice(row),
        (Activation::Identity, Some(b)) => bias_slice(row, b),
        (Activation::Identity, None) => {}
    }
}

/// The conv over a batch; returns the NCHW output.
fn run(g: &Geometry, batch: usize, x: &[f32], w: &[f32], bias: Option<&[f32]>, act: Activation) -> Vec<f32> {
    let hw_in = g.h * g.w;
    let hw = g.oh * g.ow;
    let k = g.k();
    let n_tile = tile_len(g, batch);
    let tiles_per_image = hw.div_ceil(n_tile);
    // Not zero-filled: the GEMMs (which do not read `dst`) write every element before
    // `set_len` below.
    let len = batch * g.c_out * hw;
    let mut out: Vec<f32> = Vec::with_capacity(len);
    let dst = OutPtr(out.as_mut_ptr());

    (0..batch * tiles_per_image).into_par_iter().for_each(|task| {
        let dst = dst;
        let (img, tile) = (task / tiles_per_image, task % tiles_per_image);
        let p0 = tile * n_tile;
        let n = n_tile.min(hw - p0);
        let x_img = &x[img * g.c_in * hw_in..(img + 1) * g.c_in * hw_in];
        // SAFETY: `out` holds batch * c_out * hw elements; this tile writes the columns
        // p0..p0 + n of each of the c_out rows of image `img`, which no other task touches.
        let dst_tile = unsafe { dst.0.add(img * g.c_out * hw + p0) };
        let gemm = |rhs: *const f32, rhs_rs: isize| unsafe {
            // dst[co, j] = sum_kk w[co, kk] * rhs[kk, j]; rows of dst are hw apart.
            sgemm(
                g.c_out,
                n,
                k,
                dst_tile,
                1,
                hw as isize,
                false,
                w.as_ptr(),
                1,
                k as isize,
                rhs,
                1,
                rhs_rs,
            )
        };
        with_columns(g, x_img, p0, n, gemm);
        for co in 0..g.c_out {
            // SAFETY: as for `dst_tile`: row `co` of this tile, n elements, owned by this task.
            let row = unsafe { std::slice::from_raw_parts_mut(dst_tile.add(co * hw), n) };
            epilogue(row, bias.map(|b| b[co]), act);
        }
    });
    // SAFETY: the tiles cover every (image, channel, pixel) of the output (tiles of each
    // image span 0..hw, for all c_out rows) and each GEMM wrote its whole tile.
    unsafe { out.set_len(len) };
    out
}

thread_local! {
    /// Per-thread accumulator of [`run_shifted`], reused across tiles and calls.
    static ACC: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Accumulator size of a [`run_shifted`] or [`run_packed_shifted`] tile, in floats (128 KB).
const ACC_FLOATS: usize = 32 * 1024;

/// A stride-1 conv without im2col: one GEMM per kernel tap, reading the zero-padded input in
/// place.
///
/// With the input padded to `[C_in, Hp, Wp]` and output pixel `(oy, ox)` numbered
/// `q = oy·Wp + ox` ("wide" rows of `Wp` columns, of which the first `ow` are real), tap
/// `(ky, kx)` reads input element `q + ky·Wp + kx` for every channel: a `[C_in, n]` matrix at
/// a fixed offset, row stride `Hp·Wp`. So a tile of output rows is `Σ_tap W_tap · X_shifted`,
/// `kh·kw` GEMMs with `K = C_in` accumulating into a per-thread `[C_out, n]` block; then bias
/// and activation run on the block while it is in cache and its real columns are copied out.
/// The input is copied once (the padding) instead of `kh·kw` times (im2col).
fn run_shifted(g: &Geometry, batch: usize, x: &[f32], w: &[f32], bias: Option<&[f32]>, act: Activation) -> Vec<f32> {
    let (hp, wp) = (g.h + 2 * g.ph, g.w + 2 * g.pw);
    let plane = hp * wp;
    let taps = g.kh * g.kw;
    let hw = g.oh * g.ow;

    // Padded input (shared, read-only), or the input itself when there is no padding.
    let xp = pad_planes(g, batch, x);
    // Weights per tap, `[taps, C_out, C_in]`: each tap's GEMM operand is contiguous.
    let mut wt = vec![0f32; taps * g.c_out * g.c_in];
    for co in 0..g.c_out {
        for ci in 0..g.c_in {
            for t in 0..taps {
                wt[(t * g.c_out + co) * g.c_in + ci] = w[(co * g.c_in + ci) * taps + t];
            }
        }
    }

    // Output rows per tile: the accumulator fits ACC_FLOATS, and there are at least two tiles
    // per rayon thread when the layer is large enough to split.
    let threads = rayon::current_num_threads().max(1);
    let mut rows = (ACC_FLOATS / (g.c_out * wp)).clamp(1, g.oh);
    let min_tiles = (2 * threads).div_ceil(batch);
    if g.oh.div_ceil(rows) < min_tiles {
        rows = g.oh.div_ceil(min_tiles).max(1);
    }
    let tiles_per_image = g.oh.div_ceil(rows);

    let len = batch * g.c_out * hw;
    let mut out: Vec<f32> = Vec::with_capacity(len);
    let dst = OutPtr(out.as_mut_ptr());
    (0..batch * tiles_per_image).into_par_iter().for_each(|task| {
        let dst = dst;
        let (img, tile) = (task / tiles_per_image, task % tiles_per_image);
        let oy0 = tile * rows;
        let nrows = rows.min(g.oh - oy0);
        // Wide columns of this tile; the last row stops at its last real column, so no tap
        // reads past the end of the padded plane.
        let n = (nrows - 1) * wp + g.ow;
        let x_img = &xp[img * g.c_in * plane..(img + 1) * g.c_in * plane];
        ACC.with(|acc| {
            let mut acc = acc.borrow_mut();
            if acc.len() < g.c_out * n {
                acc.resize(g.c_out * n, 0.0);
            }
            let acc = &mut acc[..g.c_out * n];
            for t in 0..taps {
                let (ky, kx) = (t / g.kw, t % g.kw);
                let rhs = &x_img[oy0 * wp + ky * wp + kx..];
                debug_assert!((g.c_in - 1) * plane + n <= rhs.len());
                // SAFETY: acc is [c_out, n]; lhs is [c_out, c_in] contiguous; rhs element
                // (ci, j) is rhs[ci * plane + j], in bounds (checked above).
                unsafe {
                    sgemm(
                        g.c_out,
                        n,
                        g.c_in,
                        acc.as_mut_ptr(),
                        1,
                        n as isize,
                        t > 0,
                        wt[t * g.c_out * g.c_in..].as_ptr(),
                        1,
                        g.c_in as isize,
                        rhs.as_ptr(),
                        1,
                        plane as isize,
                    )
                }
            }
            for co in 0..g.c_out {
                let row = &mut acc[co * n..(co + 1) * n];
                epilogue(row, bias.map(|b| b[co]), act);
                for r in 0..nrows {
                    // SAFETY: row oy0 + r of channel co of image img: ow elements that only
                    // this task writes.
                    let out_row = unsafe {
                        std::slice::from_raw_parts_mut(dst.0.add((img * g.c_out + co) * hw + (oy0 + r) * g.ow), g.ow)
                    };
                    out_row.copy_from_slice(&row[r * wp..r * wp + g.ow]);
                }
            }
        });
    });
    // SAFETY: the tiles cover every output row of every channel and image.
    unsafe { out.set_len(len) };
    out
}

/// Calls `f(cols, row_stride)` with the `[K, n]` column block of output pixels `p0..p0 + n`
/// of one image: the input itself for a 1x1 stride-1 conv (row stride `H·W`), else
/// [`im2col`] into the thread's buffer (row stride `n`).
fn with_columns(g: &Geometry, x_img: &[f32], p0: usize, n: usize, f: impl FnOnce(*const f32, isize)) {
    if g.is_pointwise() {
        return f(x_img[p0..].as_ptr(), (g.h * g.w) as isize);
    }
    let k = g.k();
    COLS.with(|cols| {
        let mut cols = cols.borrow_mut();
        if cols.len() < k * n {
            cols.resize(k * n, 0.0);
        }
        let cols = &mut cols[..k * n];
        im2col(g, x_img, p0, n, cols);
        f(cols.as_ptr(), n as isize);
    });
}

/// Gathers the `[K, n]` column block of output pixels `p0..p0 + n` of one image: row
/// `(ci, ky, kx)`, column `j` holds `x[ci, oy·sh + ky − ph, ox·sw + kx − pw]` for pixel
/// `p0 + j = oy·ow + ox`, zero where that falls in the padding.
///
/// # Shapes
/// - `x`: `[C_in, H, W]`, flat; `cols`: `[K, n]`, flat
fn im2col(g: &Geometry, x: &[f32], p0: usize, n: usize, cols: &mut [f32]) {
    let hw_in = g.h * g.w;
    for (r, row) in cols.chunks_exact_mut(n).enumerate() {
        let (ci, t) = (r / (g.kh * g.kw), r % (g.kh * g.kw));
        im2col_row(g, &x[ci * hw_in..(ci + 1) * hw_in], t / g.kw, t % g.kw, p0, row);
    }
}

/// One row of the column block: `row[j] = plane[oy·sh + ky − ph, ox·sw + kx − pw]` for output
/// pixel `p0 + j = oy·ow + ox`, zero in the padding.
///
/// # Shapes
/// - `plane`: `[H, W]` (one input channel), flat; `row`: `[n]`
fn im2col_row(g: &Geometry, plane: &[f32], ky: usize, kx: usize, p0: usize, row: &mut [f32]) {
    let n = row.len();
    let (mut j, mut p) = (0, p0);
    while j < n {
        let (oy, ox0) = (p / g.ow, p % g.ow);
        let len = (g.ow - ox0).min(n - j);
        let seg = &mut row[j..j + len];
        let iy = (oy * g.sh + ky) as isize - g.ph as isize;
        if iy < 0 || iy >= g.h as isize {
            seg.fill(0.0);
        } else {
            let src = &plane[iy as usize * g.w..(iy as usize + 1) * g.w];
            gather_row(src, seg, ox0, kx, g.sw, g.pw);
        }
        j += len;
        p += len;
    }
}

/// `seg[t] = src[(ox0 + t)·s + kx − pad]`, zero outside `src`.
#[inline]
fn gather_row(src: &[f32], seg: &mut [f32], ox0: usize, kx: usize, s: usize, pad: usize) {
    let len = seg.len();
    // Valid t: 0 <= (ox0 + t)·s + kx − pad < w.
    let off = kx as isize - pad as isize;
    let first = (ox0 * s) as isize + off; // input column of t = 0
    let t_lo = if first >= 0 { 0 } else { ((-first) as usize).div_ceil(s) };
    let w = src.len() as isize;
    let t_hi = if first >= w {
        0
    } else {
        // Largest t with first + t·s <= w − 1, plus one.
        (((w - 1 - first) as usize) / s + 1).min(len)
    };
    if t_lo >= t_hi {
        // The whole segment reads padding (it can be shorter than the padding when a tile
        // starts or ends inside an output row).
        seg.fill(0.0);
        return;
    }
    seg[..t_lo].fill(0.0);
    seg[t_hi..].fill(0.0);
    let start = (first + (t_lo * s) as isize) as usize;
    if s == 1 {
        seg[t_lo..t_hi].copy_from_slice(&src[start..start + (t_hi - t_lo)]);
    } else if s == 2 {
        packed::every_other(&src[start..], &mut seg[t_lo..t_hi]);
    } else {
        for (d, i) in seg[t_lo..t_hi].iter_mut().zip((start..).step_by(s)) {
            *d = src[i];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::packed::{packed_shifted, run_packed, run_packed_any, run_packed_shifted};
    use super::*;
    use burn::module::Param;
    use burn::nn::conv::Conv2dConfig;
    use burn::tensor::{Distribution, TensorData};

    /// The bound of `F(4x4, 3x3)`'s error, as a fraction of the largest output: its
    /// transforms (coefficients up to 8 in `Aᵀ`, 5 in `Bᵀ`) amplify rounding about 25x over
    /// `F(2x2)`'s. Measured against an f64 conv on the 9x8 map with 37 output channels
    /// (seeded draws, AVX-512 kernel): worst over 200 draws 0.98e-5 at 64 input channels,
    /// 1.4e-5 at 128 and 1.9e-5 at 300 (`F(2x2)`: 0.5-0.8e-6, im2col 0.4e-6). Under the other
    /// paths' 1e-5, unseeded draws failed the 300-channel case about once in 12 runs.
    const F4_BOUND: f32 = 4e-5;

    /// `n` values from a generator seeded by `seed`: standard normal (Box-Muller) when
    /// `normal`, else uniform in `[-bound, bound]`.
    fn seeded_values(n: usize, seed: u64, normal: bool, bound: f32) -> Vec<f32> {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        (0..n)
            .map(|_| {
                if normal {
                    let (u1, u2): (f64, f64) = (rng.random::<f64>().max(f64::MIN_POSITIVE), rng.random());
                    ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
                } else {
                    rng.random_range(-bound..=bound)
                }
            })
            .collect()
    }

    /// Every conv path against Burn's conv (+ activation) on one geometry, within 1e-5 of the
    /// largest output; `F(4x4)` within [`F4_BOUND`]. The draws are seeded by the case
    /// (inputs N(0, 1); weights and bias uniform in ±1/√fan_in, Burn's default init), so each
    /// case checks the same values on every run.
    fn check(b: usize, c_in: usize, c_out: usize, h: usize, w: usize, k: usize, s: usize, p: usize, bias: bool, act: Activation) {
        let device = crate::backend::cpu_device();
        let mut conv = Conv2dConfig::new([c_in, c_out], [k, k])
            .with_stride([s, s])
            .with_padding(if p == 0 { PaddingConfig2d::Valid } else { PaddingConfig2d::Explicit(p, p, p, p) })
            .with_bias(bias)
            .init(&device);
        let seed = [b, c_in, c_out, h, w, k, s, p, bias as usize].iter().fold(0u64, |acc, &v| acc.wrapping_mul(1_000_003).wrapping_add(v as u64));
        let fan_in = (c_in * k * k) as f32;
        let wb = 1.0 / fan_in.sqrt();
        let weight = seeded_values(c_out * c_in * k * k, seed ^ 1, false, wb);
        conv.weight = Param::from_tensor(Tensor::from_data(TensorData::new(weight, [c_out, c_in, k, k]), &device));
        if bias {
            conv.bias = Some(Param::from_tensor(Tensor::from_data(TensorData::new(seeded_values(c_out, seed ^ 2, false, wb), [c_out]), &device)));
        }
        let x = Tensor::<4>::from_data(TensorData::new(seeded_values(b * c_in * h * w, seed, true, 0.0), [b, c_in, h, w]), &device);
        let want = {
            let y = conv.forward(x.clone());
            match act {
                Activation::Silu => burn::tensor::activation::silu(y),
                Activation::Identity => y,
            }
        };
        let want_dims = want.dims();
        let want: Vec<f32> = want.into_data().try_to_vec().unwrap();
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs())).max(1.0);
        // Every value within the bound of the plan that computed it ([`F4_BOUND`] for
        // `F(4x4)`, 1e-5 for the rest) times the largest output.
        let assert_close = |got: &[f32], plan: Plan, what: &str| {
            let bound = if plan == Plan::Winograd(super::packed::winograd::Tile::F4) { F4_BOUND } else { 1e-5 };
            for (i, (a, e)) in got.iter().zip(&want).enumerate() {
                assert!((a - e).abs() <= bound * scale, "{what} b{b} {c_in}->{c_out} {h}x{w} k{k} s{s} p{p}: [{i}] {a} vs {e}");
            }
        };
        // The packed path with every kernel: the portable ones check the AVX-512 blocking
        // (12 x 32) on machines without AVX-512.
        let g = Geometry::new([c_in, c_out], [h, w], [k, k], [s, s], [p, p]);
        let xs: Vec<f32> = x.clone().into_data().try_to_vec().unwrap();
        let ws: Vec<f32> = conv.weight.val().into_data().try_to_vec().unwrap();
        let bs: Option<Vec<f32>> = conv.bias.as_ref().map(|b| b.val().into_data().try_to_vec().unwrap());
        for kern in gemm_kernel::portable_kernels().into_iter().chain(gemm_kernel::kernel()) {
            // Both packed paths where the shifted one applies.
            let im2col = gemm_kernel::pack_a(&ws, c_out, g.k(), kern.mr);
            let mut runs = vec![("im2col".to_string(), Plan::Im2col, run_packed(&g, b, &xs, &im2col, bs.as_deref(), act, kern))];
            // The phase-plane paths, in one slab (the default budget), in bands of 4 rows (a
            // budget of 1 float) and in slabs of about one image.
            for (slabs, budget) in [("", super::packed::SLAB_FLOATS), (" in bands", 1), (" per image", c_in * (h + 2) * (w + 2))] {
                super::packed::TEST_SLAB_FLOATS.with(|f| f.set(budget));
                if packed_shifted(&g) {
                    runs.push((format!("shifted{slabs}"), Plan::Shifted, run_packed_shifted(&g, b, &xs, &pack_weights(&g, &ws, kern.mr, Plan::Shifted), bs.as_deref(), act, kern)));
                }
                // Both Winograd tiles wherever Winograd applies.
                if super::packed::winograd::tile(&g).is_some() {
                    for tile in [super::packed::winograd::Tile::F2, super::packed::winograd::Tile::F4] {
                        let plan = Plan::Winograd(tile);
                        let a = pack_weights(&g, &ws, kern.mr, plan);
                        runs.push((format!("winograd {tile:?}{slabs}"), plan, run_packed_any(&g, b, &xs, &a, bs.as_deref(), act, kern, plan)));
                    }
                }
            }
            super::packed::TEST_SLAB_FLOATS.with(|f| f.set(super::packed::SLAB_FLOATS));
            for (path, plan, got) in runs {
                assert_close(&got, plan, &format!("{kern:?} {path}"));
            }
        }
        for method in [Method::Auto, Method::Direct, Method::Im2col, Method::Shifted] {
            let got = conv2d_with(x.clone(), &conv, act, method, None).unwrap_or_else(|_| panic!("fast path refused"));
            assert_eq!(got.dims(), want_dims);
            let got: Vec<f32> = got.into_data().try_to_vec().unwrap();
            // Only `Auto` on a CPU with the micro-kernels may run Winograd (and so `F(4x4)`).
            let plan = if method == Method::Auto && gemm_kernel::kernel().is_some() { Plan::of(&g, true) } else { Plan::Im2col };
            assert_close(&got, plan, &format!("{method:?}"));
        }
    }

    #[test]
    fn matches_burn_conv() {
        use Activation::*;
        // The YOLOv8 shapes: stem (3 channels, stride 2), 3x3 s1 and s2, 1x1, head outputs.
        check(1, 3, 16, 33, 40, 3, 2, 1, true, Silu);
        check(2, 8, 12, 17, 9, 3, 1, 1, true, Silu);
        check(2, 8, 12, 16, 16, 3, 2, 1, true, Silu);
        check(1, 16, 8, 13, 11, 1, 1, 0, true, Silu);
        check(3, 16, 5, 7, 6, 1, 1, 0, true, Identity);
        check(1, 4, 6, 10, 10, 3, 1, 1, false, Identity);
        check(1, 6, 4, 9, 9, 3, 1, 0, false, Silu);
        // Many tiles per image (column blocks split inside output rows).
        check(1, 64, 16, 40, 37, 3, 1, 1, true, Silu);
        check(1, 64, 32, 80, 80, 1, 1, 0, true, Identity);
        // 5x5, stride 3 (general geometry); 5x5 stride 1 with padding 1 and 0.
        check(1, 3, 4, 14, 15, 5, 3, 2, true, Silu);
        check(2, 5, 7, 11, 13, 5, 1, 1, true, Silu);
        check(1, 5, 3, 6, 5, 5, 1, 0, true, Identity);
        // Shifted GEMMs by default (C_in >= 64), several tiles, a one-row image.
        check(2, 64, 24, 12, 10, 3, 1, 1, true, Silu);
        check(1, 96, 8, 1, 17, 3, 1, 1, true, Silu);
        // Packed path: K in several blocks (K = 576 and 1152), channels not a multiple of any
        // kernel's rows, pixel tiles not a multiple of its columns.
        check(1, 64, 20, 21, 19, 3, 1, 1, true, Silu);
        check(2, 128, 13, 9, 11, 3, 2, 1, true, Identity);
        check(1, 300, 7, 5, 7, 1, 1, 0, false, Silu);
        // No bias or activation (training's convs): whole blocks written to the output
        // directly, edge rows and pixels through the accumulator, K in blocks.
        check(2, 600, 26, 9, 11, 1, 1, 0, false, Identity);
        check(1, 8, 40, 13, 17, 3, 1, 1, false, Identity);
        // Shifted packed path at stride 2 (phase planes): odd and even sides, no padding,
        // 5x5 at stride 1 with padding 2.
        check(1, 16, 20, 10, 13, 3, 2, 1, true, Silu);
        check(1, 32, 8, 9, 9, 3, 2, 0, true, Identity);
        check(2, 16, 7, 11, 13, 5, 1, 2, true, Silu);
        // Wide rows at stride 2 (the vector phase split), odd and even widths.
        check(1, 16, 8, 6, 71, 3, 2, 1, true, Silu);
        check(1, 16, 8, 5, 64, 3, 2, 1, false, Identity);
        // 5x5 at stride 2 with padding 2 (even padding: column phases swap roles).
        check(2, 16, 8, 11, 13, 5, 2, 2, true, Silu);
        // Three images: slabs of one image, or of bands, at stride 2.
        check(3, 16, 8, 19, 17, 3, 2, 1, true, Silu);
        // Winograd (3x3, stride 1, padding 1, >= 32 channels; both tiles): odd sides (the last tile half
        // outside), tasks of tiles spanning tile rows, K in blocks (300 channels), a one-column
        // image, channel counts not a multiple of the kernel's rows.
        check(2, 32, 40, 33, 35, 3, 1, 1, true, Silu);
        check(1, 32, 70, 64, 48, 3, 1, 1, true, Identity);
        check(1, 300, 37, 9, 8, 3, 1, 1, false, Silu);
        check(3, 32, 33, 7, 1, 3, 1, 1, true, Silu);
        // Runs of tiles that go on from one image to the next (25 or 9 tiles an image).
        check(5, 32, 24, 10, 10, 3, 1, 1, true, Silu);
        check(7, 48, 16, 9, 11, 3, 1, 1, false, Identity);
        // yolov8n's P3 head conv at 320 (64 channels at 40x40: F(4x4) by default).
        check(1, 64, 64, 40, 40, 3, 1, 1, true, Silu);
        // 16 channels on a map of 32+ (F(4x4) by default; yolov8n's first bottleneck).
        check(1, 16, 16, 36, 41, 3, 1, 1, true, Silu);
    }

    /// A 1x1 conv over parts read in place equals the conv of their concatenation: three
    /// parts (one a channel view of a batch-2 tensor, so strided), K in several blocks, and
    /// refusals that hand the parts back.
    #[test]
    fn conv_of_parts_matches_conv_of_concatenation() {
        let device = crate::backend::cpu_device();
        let conv = Conv2dConfig::new([300, 21], [1, 1]).with_bias(true).init(&device);
        let whole = Tensor::<4>::random([2, 200, 9, 13], Distribution::Normal(0.0, 1.0), &device);
        let parts = vec![
            Tensor::<4>::random([2, 64, 9, 13], Distribution::Normal(0.0, 1.0), &device),
            whole.narrow(1, 100, 100),
            Tensor::<4>::random([2, 136, 9, 13], Distribution::Normal(0.0, 1.0), &device),
        ];
        let want: Vec<f32> = conv2d_with(Tensor::cat(parts.clone(), 1), &conv, Activation::Silu, Method::Auto, None)
            .unwrap_or_else(|_| panic!("refused"))
            .into_data()
            .try_to_vec()
            .unwrap();
        match conv2d_cat_cached(parts.clone(), &conv, Activation::Silu, &PackCache::default()) {
            Ok(got) => {
                assert_eq!(got.dims(), [2, 21, 9, 13]);
                let got: Vec<f32> = got.into_data().try_to_vec().unwrap();
                for (i, (a, e)) in got.iter().zip(&want).enumerate() {
                    assert!((a - e).abs() <= 1e-5 * e.abs().max(1.0), "[{i}] {a} vs {e}");
                }
            }
            Err(_) => assert!(gemm_kernel::kernel().is_none(), "refused on a CPU with the micro-kernels"),
        }
        // Channels that do not add up, and a 3x3 conv: the parts come back.
        let back = conv2d_cat_cached(parts[..2].to_vec(), &conv, Activation::Silu, &PackCache::default()).unwrap_err();
        assert_eq!(back.len(), 2);
        let conv3 = Conv2dConfig::new([300, 4], [3, 3]).init(&device);
        assert_eq!(conv2d_cat_cached(parts, &conv3, Activation::Silu, &PackCache::default()).unwrap_err().len(), 3);
    }

    /// `n` values in `[-1, 1)` from a fixed ramp (`seed` shifts it), for the gradient comparisons.
    fn ramp(n: usize, seed: usize) -> Vec<f32> {
        (0..n).map(|i| (((i + seed) * 7919) % 997) as f32 / 500.0 - 1.0).collect()
    }

    /// Asserts `|got − want| ≤ 1e-4 · max(|want|, 1)` elementwise; `what` names the case.
    fn assert_close_rel(got: &[f32], want: &[f32], what: &str) {
        for (i, (a, e)) in got.iter().zip(want).enumerate() {
            assert!((a - e).abs() <= 1e-4 * e.abs().max(1.0), "{what}: [{i}] {a} vs {e}");
        }
    }

    /// The per-tap dW (`Method::Shifted`) against the im2col one (which `ops::conv`'s tests hold
    /// to Burn's gradient): padded 3x3, a 5x5 with padding 1 and an unpadded 3x3, over
    /// several images and enough output channels for more than one block per tap.
    #[test]
    fn shifted_weight_gradient_matches_im2col() {
        for &(b, c_in, c_out, h, w, k, p) in &[(2, 5, 40, 9, 11, 3, 1), (3, 4, 6, 12, 10, 5, 1), (1, 3, 33, 7, 8, 3, 0)] {
            let g = Geometry::new([c_in, c_out], [h, w], [k, k], [1, 1], [p, p]);
            let [oh, ow] = g.out_hw();
            let x = ramp(b * c_in * h * w, 1);
            let dy = ramp(b * c_out * oh * ow, 2);
            let shifted = grad_weight_with(&g, b, &x, &dy, Method::Shifted);
            let im2col = grad_weight_with(&g, b, &x, &dy, Method::Im2col);
            assert_close_rel(&shifted, &im2col, &format!("{b}x{c_in}->{c_out} {h}x{w} k{k} p{p}"));
        }
    }

    /// The dot-product dW (every kernel; the portable ones check the AVX-512 blocking) against
    /// the im2col GEMM one (which `ops::conv`'s tests hold to Burn's gradient): strides 1 and 2,
    /// 1x1, channel counts that are not multiples of the blocks, several pixel tiles, images
    /// and im2col row chunks; per image and along all images at once.
    #[test]
    fn dot_weight_gradient_matches_im2col() {
        let shapes = [
            (2, 5, 40, 9, 11, 3, 1, 1),
            (1, 20, 7, 50, 41, 3, 2, 1),
            (2, 17, 33, 24, 24, 1, 1, 0),
            (1, 3, 16, 33, 40, 3, 2, 1),
            (3, 4, 6, 12, 10, 5, 1, 1),
        ];
        for &(b, c_in, c_out, h, w, k, st, p) in &shapes {
            let g = Geometry::new([c_in, c_out], [h, w], [k, k], [st, st], [p, p]);
            let [oh, ow] = g.out_hw();
            let x = ramp(b * c_in * h * w, 1);
            let dy = ramp(b * c_out * oh * ow, 2);
            let im2col = grad_weight_with(&g, b, &x, &dy, Method::Im2col);
            for kern in gemm_kernel::portable_dot_kernels().into_iter().chain(gemm_kernel::dot_kernel()) {
                let mut runs = vec![("per image", grad_weight_dot(&g, b, &x, &dy, kern))];
                // Along all images at once, with segments that cross image boundaries.
                for seg in [16, 40, 1024] {
                    runs.push(("batch", packed::grad_weight_batch_dot_seg(&g, b, &x, &dy, kern, seg)));
                }
                for (what, got) in runs {
                    assert_close_rel(&got, &im2col, &format!("{what} {kern:?} {b}x{c_in}->{c_out} {h}x{w} k{k} s{st} p{p}"));
                }
            }
        }
    }

    /// The strided `dX` on our micro-kernels (every kernel; the portable ones check the
    /// AVX-512 blocking) against the `gemm` crate's: 3x3 stride 2 with odd and even sides (the
    /// fused col2im), 5x5 stride 2, 1x1 stride 2, stride 3; input channels that do and do not
    /// make whole row panels, several bands of output rows, more output channels than one
    /// reduction block.
    #[test]
    fn col2im_input_gradient_matches_gemm() {
        let shapes = [
            (2, 8, 7, 9, 11, 3, 2, 1),
            (1, 4, 130, 30, 200, 3, 2, 1),
            (2, 5, 6, 10, 12, 3, 2, 1),
            (1, 6, 9, 13, 14, 5, 2, 2),
            (2, 7, 5, 9, 8, 1, 2, 0),
            (1, 4, 8, 17, 16, 3, 3, 1),
        ];
        for &(b, c_in, c_out, h, w, k, st, p) in &shapes {
            let g = Geometry::new([c_in, c_out], [h, w], [k, k], [st, st], [p, p]);
            let [oh, ow] = g.out_hw();
            let wt = seeded_values(c_out * c_in * k * k, 21, true, 0.0);
            let dy = seeded_values(b * c_out * oh * ow, 22, true, 0.0);
            let want = grad_input_gemm(&g, b, &dy, &wt);
            for kern in gemm_kernel::portable_kernels().into_iter().chain(gemm_kernel::kernel()) {
                let got = packed::grad_input_col2im(&g, b, &dy, &wt, kern);
                assert_eq!(got.len(), want.len());
                assert_close_rel(&got, &want, &format!("{kern:?} {b}x{c_in}->{c_out} {h}x{w} k{k} s{st} p{p}"));
            }
        }
    }

    /// Winograd `F(3x3, 2x2)` dW (every dot kernel; chunks of 16 to 64 tiles so that small
    /// inputs reach several chunks, groups and rows of tiles per chunk) against an f64 direct
    /// sum, relative to the sum of the terms' magnitudes: odd and even sides, one-pixel maps,
    /// channel counts off the kernels' blocks. The direct dot-product path is held to the same
    /// bound, to show the transforms cost no accuracy that matters.
    #[test]
    fn winograd_weight_gradient_matches_f64() {
        let shapes = [(2, 5, 7, 9, 11), (1, 16, 12, 8, 8), (3, 3, 4, 1, 1), (2, 7, 9, 13, 6), (1, 33, 5, 4, 21)];
        for &(b, c_in, c_out, h, w) in &shapes {
            let g = Geometry::new([c_in, c_out], [h, w], [3, 3], [1, 1], [1, 1]);
            let x = seeded_values(b * c_in * h * w, 11, true, 0.0);
            let dy = seeded_values(b * c_out * h * w, 12, true, 0.0);
            let (mut exact, mut scale) = (vec![0f64; c_out * c_in * 9], vec![0f64; c_out * c_in * 9]);
            for img in 0..b {
                for co in 0..c_out {
                    for ci in 0..c_in {
                        for t in 0..9 {
                            let (ky, kx) = (t / 3, t % 3);
                            for y in 0..h {
                                for xx in 0..w {
                                    let (iy, ix) = (y as isize + ky as isize - 1, xx as isize + kx as isize - 1);
                                    if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                                        continue;
                                    }
                                    let p = dy[((img * c_out + co) * h + y) * w + xx] as f64 * x[((img * c_in + ci) * h + iy as usize) * w + ix as usize] as f64;
                                    exact[(co * c_in + ci) * 9 + t] += p;
                                    scale[(co * c_in + ci) * 9 + t] += p.abs();
                                }
                            }
                        }
                    }
                }
            }
            let check = |got: &[f32], what: &str| {
                for (i, ((&a, e), s)) in got.iter().zip(&exact).zip(&scale).enumerate() {
                    assert!((a as f64 - e).abs() <= 2e-6 * s + 1e-30, "{what} {b}x{c_in}->{c_out} {h}x{w}: [{i}] {a} vs {e} (scale {s})");
                }
            };
            check(&grad_weight_with(&g, b, &x, &dy, Method::Direct), "direct");
            check(&grad_weight(&g, b, &x, &dy), "auto");
            for kern in gemm_kernel::portable_dot_kernels().into_iter().chain(gemm_kernel::dot_kernel()) {
                for target in [16, 40, 64, 1024] {
                    check(&packed::winograd_grad::grad_weight_chunked(&g, b, &x, &dy, kern, target), &format!("{kern:?} chunks of {target}"));
                }
            }
        }
    }

    #[test]
    fn reads_channel_views_in_place() {
        // C2f splits its cv1 output with `chunk`: the second half is an offset view.
        let device = crate::backend::cpu_device();
        let conv = Conv2dConfig::new([4, 6], [3, 3])
            .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
            .init(&device);
        let x = Tensor::<4>::random([1, 8, 9, 9], Distribution::Default, &device);
        let half = x.clone().chunk(2, 1).pop().unwrap();
        let want: Vec<f32> = conv.forward(half.clone()).into_data().try_to_vec().unwrap();
        let got: Vec<f32> = conv2d(half, &conv, Activation::Identity)
            .unwrap_or_else(|_| panic!("fast path refused"))
            .into_data()
            .try_to_vec()
            .unwrap();
        for (a, e) in got.iter().zip(&want) {
            assert!((a - e).abs() <= 1e-5, "{a} vs {e}");
        }
        // A strided (non-contiguous) view is copied, and still right.
        let t = x.swap_dims(2, 3);
        let c8 = Conv2dConfig::new([8, 2], [1, 1]).init(&device);
        let want: Vec<f32> = c8.forward(t.clone()).into_data().try_to_vec().unwrap();
        let got: Vec<f32> = conv2d(t, &c8, Activation::Identity).ok().unwrap().into_data().try_to_vec().unwrap();
        for (a, e) in got.iter().zip(&want) {
            assert!((a - e).abs() <= 1e-5, "{a} vs {e}");
        }
    }

    #[test]
    fn refuses_what_it_does_not_implement() {
        let device = crate::backend::cpu_device();
        let grouped = Conv2dConfig::new([4, 4], [3, 3]).with_groups(2).init(&device);
        let x = Tensor::<4>::zeros([1, 4, 5, 5], &device);
        assert!(conv2d(x.clone(), &grouped, Activation::Silu).is_err());
        let ad = Tensor::<4>::zeros([1, 4, 5, 5], &device.clone().autodiff());
        let plain = Conv2dConfig::new([4, 4], [1, 1]).init(&device.autodiff());
        assert!(conv2d(ad, &plain, Activation::Silu).is_err());
    }
}
