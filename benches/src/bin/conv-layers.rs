//! Times every convolution of yolov8n's forward pass on its own (same shapes, random weights):
//! the project's fused CPU conv (`nn::cpu_conv`, conv + bias + SiLU) beside Burn's conv
//! followed by SiLU, with GFLOP/s. This is the per-layer profile that guides the CPU work.
//!
//! ```sh
//! cargo run --release -p yolo-benches --bin conv-layers -- --imgsz 640
//! ```

use clap::Parser;
use yolo_benches::time_ms;
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
}

/// Process CPU time in milliseconds.
fn cpu_ms() -> f64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid clock id and a valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 * 1e3 + ts.tv_nsec as f64 / 1e6
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

fn main() {
    let a = Args::parse();
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
