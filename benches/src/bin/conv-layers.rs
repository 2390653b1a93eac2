//! Times every convolution of yolov8n's forward pass on its own (same shapes, random weights):
//! the project's fused CPU conv (`nn::cpu_conv`, conv + bias + SiLU) beside Burn's conv
//! followed by SiLU, with GFLOP/s. This is the per-layer profile that guides the CPU work.
//!
//! ```sh
//! cargo run --release -p yolo-benches --bin conv-layers -- --imgsz 640
//! ```

use clap::Parser;
use yolo_benches::{cpu_ms, time_ms};
use yolo_core::burn::nn::conv::Conv2dConfig;
use yolo_core::burn::nn::PaddingConfig2d;
use yolo_core::burn::tensor::{Distribution, Tensor};
use yolo_core::nn::act::silu;
use yolo_core::nn::cpu_conv::{self, Activation, Method};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 640)]
    imgsz: usize,
    #[arg(long, default_value_t = 1)]
    batch: usize,
    #[arg(long, default_value_t = 10)]
    iters: usize,
    /// Measure process CPU time instead of wall time: on a shared VM, time the vCPU spends
    /// descheduled is not counted, so A/B comparisons of layouts stay stable (run with
    /// `RAYON_NUM_THREADS=1`, where CPU time is the work).
    #[arg(long)]
    cpu_time: bool,
    /// Time the training kernels instead: forward (no activation), dX and dW per layer, as
    /// the conv op's backward runs them.
    #[arg(long)]
    backward: bool,
}

/// Median over `iters` runs of `f` (after 2 warm-up runs), wall or CPU time.
fn measure(cpu: bool, iters: usize, mut f: impl FnMut()) -> f64 {
    if !cpu {
        return time_ms(2, iters, f).0;
    }
    f();
    f();
    let mut t: Vec<f64> = (0..iters.max(1))
        .map(|_| {
            let s = cpu_ms();
            f();
            cpu_ms() - s
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[t.len() / 2]
}

/// (name, c_in, c_out, kernel, stride, input side as a divisor of imgsz, how many in the model)
type Layer = (&'static str, usize, usize, usize, usize, usize, usize);

/// yolov8n's convolutions (nc = 80), grouped by shape.
const LAYERS: &[Layer] = &[
    ("0 stem", 3, 16, 3, 2, 1, 1),
    ("1 down", 16, 32, 3, 2, 2, 1),
    ("2 c2f.cv1", 32, 32, 1, 1, 4, 1),
    ("2 c2f.m 3x3", 16, 16, 3, 1, 4, 2),
    ("2 c2f.cv2", 48, 32, 1, 1, 4, 1),
    ("3 down", 32, 64, 3, 2, 4, 1),
    ("4 c2f.cv1", 64, 64, 1, 1, 8, 1),
    ("4 c2f.m 3x3", 32, 32, 3, 1, 8, 4),
    ("4 c2f.cv2", 128, 64, 1, 1, 8, 1),
    ("5 down", 64, 128, 3, 2, 8, 1),
    ("6 c2f.cv1", 128, 128, 1, 1, 16, 1),
    ("6 c2f.m 3x3", 64, 64, 3, 1, 16, 4),
    ("6 c2f.cv2", 256, 128, 1, 1, 16, 1),
    ("7 down", 128, 256, 3, 2, 16, 1),
    ("8 c2f.cv1", 256, 256, 1, 1, 32, 1),
    ("8 c2f.m 3x3", 128, 128, 3, 1, 32, 2),
    ("8 c2f.cv2", 384, 256, 1, 1, 32, 1),
    ("9 sppf.cv1", 256, 128, 1, 1, 32, 1),
    ("9 sppf.cv2", 512, 256, 1, 1, 32, 1),
    ("12 c2f.cv1", 384, 128, 1, 1, 16, 1),
    ("12/18 c2f.m 3x3", 64, 64, 3, 1, 16, 4),
    ("12/18 c2f.cv2", 192, 128, 1, 1, 16, 2),
    ("15 c2f.cv1", 192, 64, 1, 1, 8, 1),
    ("15 c2f.m 3x3", 32, 32, 3, 1, 8, 2),
    ("15 c2f.cv2", 96, 64, 1, 1, 8, 1),
    ("16 down", 64, 64, 3, 2, 8, 1),
    ("18 c2f.cv1", 192, 128, 1, 1, 16, 1),
    ("19 down", 128, 128, 3, 2, 16, 1),
    ("21 c2f.cv1", 384, 256, 1, 1, 32, 1),
    ("21 c2f.m 3x3", 128, 128, 3, 1, 32, 2),
    ("21 c2f.cv2", 384, 256, 1, 1, 32, 1),
    ("22 P3 box 3x3", 64, 64, 3, 1, 8, 2),
    ("22 P3 cls 3x3 a", 64, 80, 3, 1, 8, 1),
    ("22 P3 cls 3x3 b", 80, 80, 3, 1, 8, 1),
    ("22 P3 out 1x1", 64, 64, 1, 1, 8, 1),
    ("22 P3 out cls", 80, 80, 1, 1, 8, 1),
    ("22 P4 box 3x3 a", 128, 64, 3, 1, 16, 1),
    ("22 P4 box 3x3 b", 64, 64, 3, 1, 16, 1),
    ("22 P4 cls 3x3 a", 128, 80, 3, 1, 16, 1),
    ("22 P4 cls 3x3 b", 80, 80, 3, 1, 16, 1),
    ("22 P5 box 3x3 a", 256, 64, 3, 1, 32, 1),
    ("22 P5 box 3x3 b", 64, 64, 3, 1, 32, 1),
    ("22 P5 cls 3x3 a", 256, 80, 3, 1, 32, 1),
    ("22 P5 cls 3x3 b", 80, 80, 3, 1, 32, 1),
];

/// Per-layer times of the training conv kernels (`cpu_conv::{forward, grad_input, grad_weight}`).
fn backward(a: &Args) {
    println!("yolov8n training convolutions at {0}x{0}, batch {1}, median of {2} (ms, all instances of the shape)", a.imgsz, a.batch, a.iters);
    println!("| layer | c_in→c_out | k/s | in | forward | dX | dW | dW im2col | dW shifted | dX GFLOP/s | dW GFLOP/s |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    let mut totals = [0.0; 5];
    let mut flops = 0.0;
    let values = |n: usize, seed: usize| -> Vec<f32> { (0..n).map(|i| (((i + seed) * 7919) % 1000) as f32 / 1000.0 - 0.5).collect() };
    for &(name, c_in, c_out, k, s, div, count) in LAYERS {
        let side = a.imgsz / div;
        let g = cpu_conv::Geometry::new([c_in, c_out], [side, side], [k, k], [s, s], [k / 2, k / 2]);
        let [oh, ow] = g.out_hw();
        let x = values(a.batch * c_in * side * side, 1);
        let w = values(c_out * c_in * k * k, 2);
        let dy = values(a.batch * c_out * oh * ow, 3);
        let n = count as f64;
        let t = [
            measure(a.cpu_time, a.iters, || {
                std::hint::black_box(cpu_conv::forward(&g, a.batch, &x, &w, None, Activation::Identity, Method::Auto));
            }),
            measure(a.cpu_time, a.iters, || {
                std::hint::black_box(cpu_conv::grad_input(&g, a.batch, &dy, &w));
            }),
            measure(a.cpu_time, a.iters, || {
                std::hint::black_box(cpu_conv::grad_weight(&g, a.batch, &x, &dy));
            }),
            measure(a.cpu_time, a.iters, || {
                std::hint::black_box(cpu_conv::grad_weight_with(&g, a.batch, &x, &dy, Method::Im2col));
            }),
            measure(a.cpu_time, a.iters, || {
                std::hint::black_box(cpu_conv::grad_weight_with(&g, a.batch, &x, &dy, Method::Shifted));
            }),
        ];
        let flop = 2.0 * (a.batch * c_out * oh * ow * c_in * k * k) as f64;
        for (tot, v) in totals.iter_mut().zip(t) {
            *tot += v * n;
        }
        flops += flop * n;
        println!(
            "| {name} | {c_in}→{c_out} | {k}/{s} | {side} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.0} | {:.0} |",
            t[0] * n,
            t[1] * n,
            t[2] * n,
            t[3] * n,
            t[4] * n,
            flop / t[1] / 1e6,
            flop / t[2] / 1e6
        );
    }
    println!(
        "| total | | | | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.0} | {:.0} |",
        totals[0],
        totals[1],
        totals[2],
        totals[3],
        totals[4],
        flops / totals[1] / 1e6,
        flops / totals[2] / 1e6
    );
}

fn main() {
    let a = Args::parse();
    if a.backward {
        return backward(&a);
    }
    let device = yolo_core::backend::cpu_device();
    println!("yolov8n convolutions at {0}x{0}, batch {1}, median of {2} (ms, all instances of the shape)", a.imgsz, a.batch, a.iters);
    println!("| layer | c_in→c_out | k/s | in | ours | im2col | shifted | burn + silu | ours GFLOP/s |");
    println!("|---|---|---|---|---|---|---|---|---|");
    let (mut total_ours, mut total_burn, mut total_flop) = (0.0, 0.0, 0.0);
    let mut totals = [0.0; 2];
    for &(name, c_in, c_out, k, s, div, count) in LAYERS {
        let side = a.imgsz / div;
        let conv = Conv2dConfig::new([c_in, c_out], [k, k])
            .with_stride([s, s])
            .with_padding(PaddingConfig2d::Explicit(k / 2, k / 2, k / 2, k / 2))
            .with_bias(true)
            .init(&device);
        let x = Tensor::<4>::random([a.batch, c_in, side, side], Distribution::Default, &device);
        let (ours, _) = (measure(a.cpu_time, a.iters, || {
            let y = cpu_conv::conv2d(x.clone(), &conv, Activation::Silu).unwrap_or_else(|_| panic!("refused"));
            std::hint::black_box(y);
        }), ());
        let by = |m: Method| {
            measure(a.cpu_time, a.iters, || {
                let y = cpu_conv::conv2d_with(x.clone(), &conv, Activation::Silu, m).unwrap_or_else(|_| panic!("refused"));
                std::hint::black_box(y);
            })
        };
        let (i2c, taps) = (by(Method::Im2col), by(Method::Shifted));
        let burn = measure(a.cpu_time, a.iters, || {
            std::hint::black_box(silu(conv.forward(x.clone())));
        });
        let out = side / s;
        let flop = 2.0 * (a.batch * c_out * out * out * c_in * k * k) as f64;
        let n = count as f64;
        total_ours += ours * n;
        for (t, v) in totals.iter_mut().zip([i2c, taps]) {
            *t += v * n;
        }
        total_burn += burn * n;
        total_flop += flop * n;
        println!(
            "| {name} | {c_in}→{c_out} | {k}/{s} | {side} | {:.2} | {:.2} | {:.2} | {:.2} | {:.0} |",
            ours * n,
            i2c * n,
            taps * n,
            burn * n,
            flop / ours / 1e6
        );
    }
    println!(
        "| total | | | | {total_ours:.1} | {:.1} | {:.1} | {total_burn:.1} | {:.0} |",
        totals[0],
        totals[1],
        total_flop / total_ours / 1e6
    );
}
