//! Convolution as a backend operation with its own backward, for training on the `flex` CPU
//! backend.
//!
//! Burn's `flex` backward of a conv (0.22.1) computes `dX` with its transposed conv and `dW`
//! by re-running its forward conv on transposed copies of `X` and `dY` (for 1x1 convs that is
//! one matrix-vector product per input channel). [`ConvOps::conv2d_plain`] instead runs the
//! kernels of [`crate::cpu::conv`] forward, and in the backward pass:
//! - `dX`: for stride 1, the forward kernel on `dY` with the flipped, transposed weights; for
//!   other strides `Wᵀ·dY` in column blocks added back into `dX` (col2im);
//! - `dW`: `dY · im2col(X)ᵀ` as GEMMs over pixel tiles, summed over tiles and images.
//!
//! The op has no bias and no groups or dilation: YOLOv8's Conv blocks have no bias (their
//! BatchNorm has one), and the Detect head's bias is added with Burn's broadcast add.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::tensor::FloatTensor;
use burn::backend::{backend_extension, Autodiff, Backend, Dispatch, Flex, TensorMetadata};
use burn::nn::conv::Conv2d;
use burn::tensor::ops::{ConvOptions, PadMode};
use burn::tensor::{DType, FloatDType, Shape, Slice, Tensor};
use burn_flex::FlexTensor;

use crate::cpu::conv::{self as cpu_conv, Activation, Geometry, Method};
use crate::cpu::flex::{self, dims4, flex_values};

/// A conv without bias, groups 1, dilation 1, symmetric padding, as one backend operation.
#[backend_extension(Flex, Autodiff)]
pub trait ConvOps: Backend {
    /// `conv2d(x, weight)` with `stride` and `padding` (top = bottom, left = right).
    ///
    /// # Shapes
    /// - `x`: `[B, C_in, H, W]`, `weight`: `[C_out, C_in, kh, kw]`
    /// - output: `[B, C_out, (H + 2p - kh) / s + 1, (W + 2p - kw) / s + 1]`
    fn conv2d_plain(x: FloatTensor<Self>, weight: FloatTensor<Self>, stride: [usize; 2], padding: [usize; 2]) -> FloatTensor<Self>;
}

/// The backward kernels of [`ConvOps`], for backends that run them (here: `flex`).
pub trait ConvGrads: Backend {
    /// `(dX, dW)` of `conv2d_plain(x, weight, stride, padding)` for the output gradient `dy`;
    /// each only when asked for.
    fn conv2d_plain_grads(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        dy: FloatTensor<Self>,
        stride: [usize; 2],
        padding: [usize; 2],
        need: [bool; 2],
    ) -> [Option<FloatTensor<Self>>; 2];

    /// The input as the op keeps it for the backward pass: made contiguous once here (a
    /// channel slice such as C2f's half would otherwise be copied by the forward and again
    /// by the backward).
    fn conv2d_plain_input(x: FloatTensor<Self>) -> FloatTensor<Self>;
}


fn from_vec(v: Vec<f32>, shape: [usize; 4]) -> FlexTensor {
    flex::flex_primitive(v, Shape::new(shape))
}

/// The geometry and batch size of a call.
fn geometry(x: &FlexTensor, weight: &FlexTensor, stride: [usize; 2], padding: [usize; 2]) -> (Geometry, usize) {
    let xs = x.shape();
    let ws = weight.shape();
    let ([b, c_in, h, w], [c_out, wc_in, kh, kw]) = ([xs[0], xs[1], xs[2], xs[3]], [ws[0], ws[1], ws[2], ws[3]]);
    assert_eq!(c_in, wc_in, "conv2d_plain: input has {c_in} channels, weight expects {wc_in}");
    (Geometry::new([c_in, c_out], [h, w], [kh, kw], stride, padding), b)
}

impl ConvOps for Flex {
    fn conv2d_plain(x: FlexTensor, weight: FlexTensor, stride: [usize; 2], padding: [usize; 2]) -> FlexTensor {
        let (g, b) = geometry(&x, &weight, stride, padding);
        let out = cpu_conv::forward(&g, b, &flex_values(&x), &flex_values(&weight), None, Activation::Identity, Method::Auto);
        let [oh, ow] = g.out_hw();
        from_vec(out, [b, weight.shape()[0], oh, ow])
    }
}

impl ConvGrads for Flex {
    fn conv2d_plain_grads(
        x: FlexTensor,
        weight: FlexTensor,
        dy: FlexTensor,
        stride: [usize; 2],
        padding: [usize; 2],
        [need_x, need_w]: [bool; 2],
    ) -> [Option<FlexTensor>; 2] {
        let (g, b) = geometry(&x, &weight, stride, padding);
        let dyv = flex_values(&dy);
        let dx = need_x.then(|| from_vec(cpu_conv::grad_input(&g, b, &dyv, &flex_values(&weight)), dims4(&x, "conv2d_plain")));
        let dw = need_w.then(|| from_vec(cpu_conv::grad_weight(&g, b, &flex_values(&x), &dyv), dims4(&weight, "conv2d_plain")));
        [dx, dw]
    }

    fn conv2d_plain_input(x: FlexTensor) -> FlexTensor {
        flex::flex_contiguous(x)
    }
}

impl<B: Backend + ConvOps + ConvGrads, C: CheckpointStrategy> ConvOps for Autodiff<B, C> {
    fn conv2d_plain(x: FloatTensor<Self>, weight: FloatTensor<Self>, stride: [usize; 2], padding: [usize; 2]) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct ConvBackward;

        impl<B: Backend + ConvGrads> Backward<B, 2> for ConvBackward {
            // The input and the weight (kept, as Burn's conv checkpoints them), stride, padding.
            type State = (FloatTensor<B>, FloatTensor<B>, [usize; 2], [usize; 2]);

            fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
                let [node_x, node_w] = ops.parents;
                let dy = grads.consume::<B>(&ops.node);
                let (x, w, stride, padding) = ops.state;
                let [dx, dw] = B::conv2d_plain_grads(x, w, dy, stride, padding, [node_x.is_some(), node_w.is_some()]);
                if let (Some(node), Some(dx)) = (node_x, dx) {
                    grads.register::<B>(node.id, dx);
                }
                if let (Some(node), Some(dw)) = (node_w, dw) {
                    grads.register::<B>(node.id, dw);
                }
            }
        }

        let (x, node_x) = x.into_parts();
        let (w, node_w) = weight.into_parts();
        match ConvBackward.prepare::<C>([node_x, node_w]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let x = B::conv2d_plain_input(x);
                let out = B::conv2d_plain(x.clone(), w.clone(), stride, padding);
                prep.finish((x, w, stride, padding), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::conv2d_plain(x, w, stride, padding)),
        }
    }
}

/// `conv(x)` with `conv`'s weight, bias, stride and padding through [`ConvOps`] on the CPU
/// backend (autodiff or not); `Err(x)` when it does not apply (another backend, groups or
/// dilation other than 1, asymmetric or `Same` padding, not f32, under autocast), for the caller
/// to run Burn's conv.
///
/// # Shapes
/// - `x`: `[B, C_in, H, W]`; output: `[B, C_out, H_out, W_out]`
pub fn conv2d(x: Tensor<4>, conv: &Conv2d) -> Result<Tensor<4>, Tensor<4>> {
    let device = x.device();
    if !flex::is_flex(&device) || x.dtype() != DType::F32 || crate::amp::autocast_dtype().is_some() {
        return Err(x);
    }
    let Some(padding) = cpu_conv::plain_padding(x.dims(), conv) else {
        return Err(x);
    };
    let [c_out, _, _, _] = conv.weight.dims();
    let s = conv.stride;
    let weight = conv.weight.val();
    if weight.dtype() != DType::F32 {
        return Err(x);
    }
    let y = Tensor::<4>::from_dispatch(<Dispatch as ConvOps>::conv2d_plain(x.into_dispatch(), weight.into_dispatch(), s, padding));
    Ok(match &conv.bias {
        Some(b) => y + b.val().reshape([1, c_out, 1, 1]),
        None => y,
    })
}

/// `conv(x)` where neither our CPU conv nor its op applies: on the GPU backends
/// [`conv2d_matmul`] when training (Burn's direct kernel's weight gradient was the slow
/// part) and for inference convs of at least [`MATMUL_MIN_FLOPS`] (below that, the direct
/// kernel's two launches cost less host time than im2col's dozen: at batch 1 the whole
/// forward was twice as long with the matmul everywhere), and for half-precision inference
/// ([`crate::YoloV8::half`], or under autocast): Burn 0.22's direct conv kernel accumulates
/// f16 products in f16 (its implicit GEMM in f32, but the autotuner may pick either), the
/// matmul in f32 as PyTorch's f16 convs do (on lavapipe the f16 model's boxes were 2.5x and
/// its scores 4x as far from the f32 output as Ultralytics' f16 ones with Burn's conv; with
/// the matmul, as close as on the CPU: 0.33x and 1.0x). This costs launches at batch 1 (see
/// above): to be measured on a GPU. Burn's conv otherwise (and on the CPU backend in another
/// dtype, and for convs [`conv2d_matmul`] refuses).
/// `YOLO_RS_GPU_CONV=matmul|direct` forces one or the other, for measuring.
///
/// # Shapes
/// - `x`: `[B, C_in, H, W]`; output: `[B, C_out, H_out, W_out]`
pub fn conv2d_any(x: Tensor<4>, conv: &Conv2d) -> Tensor<4> {
    let device = x.device();
    let autocast = crate::amp::autocast_dtype();
    let matmul = match gpu_conv_mode() {
        GpuConv::Matmul => true,
        GpuConv::Direct => false,
        GpuConv::Auto => {
            device.is_autodiff()
                || x.dtype() != DType::F32
                || autocast.is_some()
                || conv_flops(&x, conv) >= MATMUL_MIN_FLOPS
        }
    };
    // Autocast applies on every backend (on `flex` it runs Burn's half-precision ops: for
    // checking, not for speed).
    let x = match autocast {
        Some(dtype) => match autocast_conv(x, conv, dtype, matmul) {
            Ok(y) => return y,
            Err(x) => x,
        },
        None => x,
    };
    if !flex::is_flex(&device) && matmul {
        return conv2d_matmul(x, conv).unwrap_or_else(|x| conv.forward(x));
    }
    conv.forward(x)
}

/// The multiply-adds times two of an inference conv from which [`conv2d_any`] takes the
/// matmul on a GPU (a guess from whole-forward timings on an H200: 640 px batch 8 went
/// 53 -> 32 ms with the matmul everywhere, batch 1 12 -> 24 ms).
pub const MATMUL_MIN_FLOPS: f64 = 5e8;

#[derive(Clone, Copy, PartialEq, Debug)]
enum GpuConv {
    Auto,
    Matmul,
    Direct,
}

fn gpu_conv_mode() -> GpuConv {
    static MODE: std::sync::OnceLock<GpuConv> = std::sync::OnceLock::new();
    *MODE.get_or_init(|| match std::env::var("YOLO_RS_GPU_CONV").as_deref() {
        Ok("matmul") => GpuConv::Matmul,
        Ok("direct") => GpuConv::Direct,
        _ => GpuConv::Auto,
    })
}

/// `2·B·C_out·oh·ow·C_in·kh·kw` (groups and dilation aside: an estimate for choosing a path).
fn conv_flops(x: &Tensor<4>, conv: &Conv2d) -> f64 {
    let [b, _, h, w] = x.dims();
    let [c_out, c_in, kh, kw] = conv.weight.dims();
    let [sh, sw] = conv.stride;
    let (oh, ow) = (h / sh.max(1), w / sw.max(1));
    2.0 * (b * c_out * oh * ow * c_in * kh * kw) as f64
}

/// `conv(x)` (bias included) as im2col and one batched matrix product in Burn's tensor ops,
/// differentiated by Burn's autodiff: the conv of the GPU backends. Burn 0.22.1's own conv
/// on `wgpu` ran every YOLO conv, forward and weight gradient, with its direct kernel (its
/// implicit-GEMM candidates need cooperative-matrix tiles that WGSL does not have), ~0.2
/// TFLOP/s on an H200; a matrix product runs on the backend's tiled matmul instead. The
/// columns take `kh·kw` times the input's memory (none for a 1x1 stride-1 conv: the input
/// is the matrix). `Err(x)` for groups or dilation other than 1 and `Same` or asymmetric
/// padding, for the caller to run Burn's conv.
///
/// # Shapes
/// - `x`: `[B, C_in, H, W]`; output: `[B, C_out, H_out, W_out]`
pub fn conv2d_matmul(x: Tensor<4>, conv: &Conv2d) -> Result<Tensor<4>, Tensor<4>> {
    let Some(padding) = cpu_conv::plain_padding(x.dims(), conv) else {
        return Err(x);
    };
    Ok(matmul_conv(x, conv.weight.val(), conv.bias.as_ref().map(|b| b.val()), conv.stride, padding))
}

/// [`conv2d_matmul`] with the weight and bias given (in any float dtype, the input's).
///
/// # Shapes
/// - `x`: `[B, C_in, H, W]`, `weight`: `[C_out, C_in, kh, kw]`, `bias`: `[C_out]`
/// - output: `[B, C_out, (H + 2p - kh) / s + 1, (W + 2p - kw) / s + 1]`
fn matmul_conv(x: Tensor<4>, weight: Tensor<4>, bias: Option<Tensor<1>>, [sh, sw]: [usize; 2], [ph, pw]: [usize; 2]) -> Tensor<4> {
    let [b, c_in, h, w] = x.dims();
    let [c_out, _, kh, kw] = weight.dims();
    let (oh, ow) = ((h + 2 * ph - kh) / sh + 1, (w + 2 * pw - kw) / sw + 1);
    let k = c_in * kh * kw;
    let cols = if kh == 1 && kw == 1 && sh == 1 && sw == 1 && ph == 0 && pw == 0 {
        x.reshape([b, c_in, h * w])
    } else {
        let xp = if ph + pw > 0 { x.pad((pw, pw, ph, ph), PadMode::Constant(0.0)) } else { x };
        // Tap (ky, kx): the padded input's rows ky, ky + sh, … and columns kx, kx + sw, …;
        // stacked after the channel axis, rows of the matrix are (channel, ky, kx) as the
        // weight's [C_out, C_in, kh, kw] flattens.
        let taps = (0..kh * kw)
            .map(|t| {
                let (ky, kx) = ((t / kw) as isize, (t % kw) as isize);
                let rows = Slice::new(ky, Some(ky + ((oh - 1) * sh) as isize + 1), sh as isize);
                let cols = Slice::new(kx, Some(kx + ((ow - 1) * sw) as isize + 1), sw as isize);
                xp.clone().slice([Slice::from(..), Slice::from(..), rows, cols])
            })
            .collect::<Vec<_>>();
        Tensor::<4>::stack::<5>(taps, 2).reshape([b, k, oh * ow])
    };
    let y = weight.reshape([1, c_out, k]).matmul(cols).reshape([b, c_out, oh, ow]);
    match bias {
        Some(bias) => y + bias.reshape([1, c_out, 1, 1]),
        None => y,
    }
}

/// `conv(x)` under [`amp::autocast`](crate::amp::autocast): input, weight and bias cast to
/// `dtype`, the conv run in it ([`matmul_conv`] when `matmul`, Burn's conv otherwise), the
/// output cast back to f32. `Err(x)` for convs [`conv2d_matmul`] refuses (they run in f32).
///
/// # Shapes
/// - `x`: `[B, C_in, H, W]`; output: `[B, C_out, H_out, W_out]`
fn autocast_conv(x: Tensor<4>, conv: &Conv2d, dtype: FloatDType, matmul: bool) -> Result<Tensor<4>, Tensor<4>> {
    let Some(padding) = cpu_conv::plain_padding(x.dims(), conv) else {
        return Err(x);
    };
    let x = x.cast(dtype);
    let weight = conv.weight.val().cast(dtype);
    let bias = conv.bias.as_ref().map(|b| b.val().cast(dtype));
    let y = if matmul {
        matmul_conv(x, weight, bias, conv.stride, padding)
    } else {
        burn::tensor::module::conv2d(x, weight, bias, ConvOptions::new(conv.stride, padding, [1, 1], 1))
    };
    Ok(y.cast(FloatDType::F32))
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::conv::Conv2dConfig;
    use burn::nn::PaddingConfig2d;
    use burn::tensor::Distribution;

    /// Forward output and the gradients of x, weight and bias of `Σ out · r` (r random), ours
    /// against Burn's conv.
    fn check(b: usize, c_in: usize, c_out: usize, h: usize, w: usize, k: usize, s: usize, p: usize, bias: bool) {
        check_path(b, c_in, c_out, h, w, k, s, p, bias, conv2d);
    }

    type ConvPath = fn(Tensor<4>, &Conv2d) -> Result<Tensor<4>, Tensor<4>>;

    #[allow(clippy::too_many_arguments)]
    fn check_path(b: usize, c_in: usize, c_out: usize, h: usize, w: usize, k: usize, s: usize, p: usize, bias: bool, path: ConvPath) {
        let p = if p == 0 { PaddingConfig2d::Valid } else { PaddingConfig2d::Explicit(p, p, p, p) };
        check_conv(b, [h, w], Conv2dConfig::new([c_in, c_out], [k, k]).with_stride([s, s]).with_padding(p).with_bias(bias), path);
    }

    /// [`check_path`] for any conv config (kernels, strides and paddings that differ by axis).
    fn check_conv(b: usize, [h, w]: [usize; 2], config: Conv2dConfig, path: ConvPath) {
        let device = crate::backend::cpu_device().autodiff();
        let conv = config.init(&device);
        let ([c_out, c_in, _, _], bias) = (conv.weight.dims(), conv.bias.is_some());
        let (k, s, p) = (conv.kernel_size, conv.stride, &conv.padding);
        let x0 = Tensor::<4>::random([b, c_in, h, w], Distribution::Normal(0.0, 1.0), &device).into_data();
        let run = |ours: bool| {
            let conv = conv.clone();
            let x = Tensor::<4>::from_data(x0.clone(), &device).require_grad();
            let y = if ours { path(x.clone(), &conv).unwrap_or_else(|_| panic!("refused")) } else { conv.forward(x.clone()) };
            let r = Tensor::<4>::from_data(
                Tensor::<4>::random(y.dims(), Distribution::Normal(0.0, 1.0), &crate::backend::cpu_device())
                    .into_data(),
                &device,
            );
            (y, x, conv, r)
        };
        let (y_ours, x_ours, conv_ours, r) = run(true);
        let (y_burn, x_burn, conv_burn, _) = run(false);
        let r2 = r.clone();
        let g_ours = (y_ours.clone() * r).sum().backward();
        let g_burn = (y_burn.clone() * r2).sum().backward();
        let close = |what: &str, a: Vec<f32>, e: Vec<f32>| {
            assert_eq!(a.len(), e.len(), "{what}: sizes");
            let scale = e.iter().fold(0f32, |m, v| m.max(v.abs())).max(1.0);
            for (i, (a, e)) in a.iter().zip(&e).enumerate() {
                assert!((a - e).abs() <= 2e-5 * scale, "{what} b{b} {c_in}->{c_out} {h}x{w} k{k:?} s{s:?} p{p:?}: [{i}] {a} vs {e}");
            }
        };
        let v = |t: Tensor<4>| -> Vec<f32> { t.into_data().try_to_vec().unwrap() };
        close("output", v(y_ours), v(y_burn));
        close("dx", v(x_ours.grad(&g_ours).unwrap()), v(x_burn.grad(&g_burn).unwrap()));
        close("dw", v(conv_ours.weight.grad(&g_ours).unwrap()), v(conv_burn.weight.grad(&g_burn).unwrap()));
        if bias {
            let vb = |t: Tensor<1>| -> Vec<f32> { t.into_data().try_to_vec().unwrap() };
            close(
                "db",
                vb(conv_ours.bias.as_ref().unwrap().grad(&g_ours).unwrap()),
                vb(conv_burn.bias.as_ref().unwrap().grad(&g_burn).unwrap()),
            );
        }
    }

    #[test]
    fn gradients_match_burn_conv() {
        // Stem (3 channels, stride 2), 3x3 stride 1 and 2, 1x1, 1x1 with bias (head), shifted
        // GEMMs (C_in >= 64), an odd size whose last row the stride-2 conv drops, 5x5.
        check(2, 3, 8, 16, 12, 3, 2, 1, false);
        check(2, 6, 5, 9, 11, 3, 1, 1, false);
        check(1, 8, 6, 10, 10, 3, 2, 1, false);
        check(3, 7, 4, 6, 5, 1, 1, 0, false);
        check(2, 16, 5, 7, 7, 1, 1, 0, true);
        check(1, 64, 6, 9, 8, 3, 1, 1, false);
        check(2, 4, 3, 9, 9, 3, 2, 1, false);
        check(1, 3, 2, 12, 13, 5, 1, 2, true);
        check(1, 3, 2, 12, 13, 5, 3, 1, false);
        // Stride 2 with several blocks of input channels per image in dX (16 = 4 blocks of 4).
        check(2, 16, 4, 64, 64, 3, 2, 1, false);
        // dW summed over many pixel tiles and images.
        check(3, 32, 8, 48, 40, 3, 1, 1, false);
    }

    /// The GPU backends' im2col + matmul conv, checked on the CPU backend (the same tensor
    /// ops): 1x1 with and without a matrix copy, strides 1-3, odd sizes, 5x5, bias.
    #[test]
    fn matmul_conv_matches_burn_conv() {
        check_path(2, 3, 8, 16, 12, 3, 2, 1, false, conv2d_matmul);
        check_path(2, 6, 5, 9, 11, 3, 1, 1, true, conv2d_matmul);
        check_path(3, 7, 4, 6, 5, 1, 1, 0, false, conv2d_matmul);
        check_path(2, 16, 5, 7, 7, 1, 1, 0, true, conv2d_matmul);
        check_path(1, 4, 3, 9, 9, 1, 2, 0, false, conv2d_matmul);
        check_path(2, 4, 3, 9, 8, 3, 2, 1, false, conv2d_matmul);
        check_path(1, 3, 2, 12, 13, 5, 1, 2, true, conv2d_matmul);
        check_path(1, 3, 2, 12, 13, 5, 3, 1, false, conv2d_matmul);
        check_path(1, 2, 3, 6, 7, 3, 1, 0, false, conv2d_matmul);
        // Kernel, stride and padding that differ by axis (a swapped axis fails it).
        let conv = Conv2dConfig::new([3, 4], [3, 1]).with_stride([2, 1]).with_padding(PaddingConfig2d::Explicit(1, 0, 1, 0));
        check_conv(2, [9, 6], conv, conv2d_matmul);
        let conv = Conv2dConfig::new([2, 3], [1, 3]).with_stride([1, 3]).with_padding(PaddingConfig2d::Explicit(0, 2, 0, 2));
        check_conv(1, [5, 10], conv, conv2d_matmul);
    }

    /// Under autocast the conv runs in f16 and hands back f32: value and gradients (f32, for
    /// the f32 parameters) within f16 rounding of the f32 conv, but not equal to it. On the
    /// matmul path (training) and Burn's conv (inference).
    #[test]
    fn autocast_conv_runs_in_half_precision() {
        for autodiff in [true, false] {
            let cpu = crate::backend::cpu_device();
            let device = if autodiff { cpu.clone().autodiff() } else { cpu.clone() };
            let conv = Conv2dConfig::new([6, 5], [3, 3])
                .with_stride([2, 2])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .init(&device);
            let mut conv = conv;
            conv.bias = Some(burn::module::Param::from_tensor(Tensor::<1>::random([5], Distribution::Normal(0.0, 1.0), &device)));
            let x0 = Tensor::<4>::random([2, 6, 9, 11], Distribution::Normal(0.0, 1.0), &cpu).into_data();
            let r0 = Tensor::<4>::random([2, 5, 5, 6], Distribution::Normal(0.0, 1.0), &cpu).into_data();
            let run = |half: bool| {
                let _scope = crate::amp::autocast(half.then_some(FloatDType::F16));
                let x = Tensor::<4>::from_data(x0.clone(), &device);
                let x = if autodiff { x.require_grad() } else { x };
                let y = conv2d_any(x.clone(), &conv);
                assert_eq!(y.dtype(), DType::F32);
                let v = |t: Tensor<4>| -> Vec<f32> { t.into_data().convert::<f32>().try_to_vec().unwrap() };
                if !autodiff {
                    return vec![v(y)];
                }
                let g = (y.clone() * Tensor::<4>::from_data(r0.clone(), &device)).sum().backward();
                let dw = conv.weight.grad(&g).unwrap();
                assert_eq!(dw.dtype(), DType::F32);
                let db: Vec<f32> = conv.bias.as_ref().unwrap().grad(&g).unwrap().into_data().try_to_vec().unwrap();
                vec![v(y), v(x.grad(&g).unwrap()), v(dw), db]
            };
            let (half, full) = (run(true), run(false));
            for (what, (a, e)) in ["output", "dx", "dw", "db"].iter().zip(half.iter().zip(&full)) {
                let scale = e.iter().fold(0f32, |m, v| m.max(v.abs()));
                let diff = a.iter().zip(e).fold(0f32, |m, (a, e)| m.max((a - e).abs()));
                assert!(diff <= 4e-3 * scale, "{what} (autodiff {autodiff}): max diff {diff} of {scale}");
                if *what != "db" {
                    // db is the sum of the output's gradient rounded to f16 per value (the
                    // bias add runs in f16), which can come out equal to the f32 sum: only
                    // the others must show f16.
                    assert!(diff > 0.0, "{what} (autodiff {autodiff}): identical to f32, autocast did not apply");
                }
            }
        }
    }

    #[test]
    fn refuses_grouped_convs() {
        let device = crate::backend::cpu_device().autodiff();
        let conv = Conv2dConfig::new([4, 4], [3, 3]).with_groups(2).init(&device);
        assert!(conv2d(Tensor::<4>::zeros([1, 4, 5, 5], &device), &conv).is_err());
        assert!(conv2d_matmul(Tensor::<4>::zeros([1, 4, 5, 5], &device), &conv).is_err());
    }
}
