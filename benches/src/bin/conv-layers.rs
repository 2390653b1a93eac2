//! Times every convolution of yolov8n's forward pass on its own (same shapes, random weights):
//! the project's fused CPU conv (`cpu::conv`, conv + bias + SiLU; `direct`: the same
//! without Winograd), the `gemm`-crate paths (im2col, shifted) and Burn's conv followed by
//! SiLU, with GFLOP/s (direct-conv FLOPs, also for Winograd). This is the per-layer profile that guides the CPU work.
//!
//! ```sh
//! cargo run --release -p yolo-benches --bin conv-layers -- --imgsz 640
//! ```

use clap::Parser;
use yolo_benches::{cpu_ms, time_ms};
use yolo_core::burn::nn::conv::Conv2dConfig;
use yolo_core::burn::nn::PaddingConfig2d;
use yolo_core::burn::tensor::{Distribution, Tensor};
use yolo_core::ops::act::silu;
use yolo_core::cpu::conv::{self as cpu_conv, Activation, Method};

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
    /// Time the GEMM micro-kernel alone on panels that stay in L1 (this machine's peak for
    /// the conv kernels), single-threaded.
    #[arg(long)]
    kernel: bool,
    /// Only the layers whose name contains this.
    #[arg(long)]
    only: Option<String>,
    /// Time only our conv (for profiling it with perf); the other columns read 0.
    #[arg(long)]
    ours_only: bool,
    /// Report the minimum over the runs instead of the median (steadier on a shared VM, where
    /// other tenants only ever add time).
    #[arg(long)]
    min: bool,
    /// Run the layers in turn, as a forward does (each instance once per round, in the
    /// model's order), instead of each one `--iters` times in a row: every conv then starts
    /// with its weights evicted by the others', as in the model. Times ours only.
    #[arg(long)]
    in_turn: bool,
    /// With `--in-turn`: the direct conv (no Winograd) for inputs smaller than this side.
    #[arg(long, default_value_t = 0)]
    direct_below: usize,
}

/// GFLOP/s of the micro-kernel on L1-resident panels (`kc` = 256), one thread.
fn kernel_peak() {
    let Some(kern) = yolo_core::cpu::gemm_kernel::kernel() else {
        println!("no micro-kernel for this CPU (the gemm crate runs the convs)");
        return;
    };
    let kc = 256;
    let a = vec![0.5f32; kc * kern.mr];
    let b = vec![0.25f32; kc * kern.nr];
    let mut c = vec![0f32; kern.mr * kern.nr];
    let reps = 20_000;
    let t = time_ms(1, 5, || {
        for _ in 0..reps {
            // SAFETY: a, b and c hold kc·mr, kc·nr and mr·nr values.
            unsafe { kern.run(kc, a.as_ptr(), kern.mr, b.as_ptr(), kern.nr, c.as_mut_ptr(), kern.nr, true) };
        }
        std::hint::black_box(&c);
    })
    .0;
    let flop = 2.0 * (kc * kern.mr * kern.nr * reps) as f64;
    println!("{kern:?}: {:.1} GFLOP/s on one thread (kc {kc}, L1-resident panels)", flop / t / 1e6);
}

/// Median over `iters` runs of `f` (after 2 warm-up runs), wall or CPU time.
///
/// Runs on the CPU pool with its workers kept awake ([`yolo_core::backend::on_cpu_pool`]), as
/// a model's forward does: otherwise each conv would also time waking the sleeping workers.
fn measure(cpu: bool, iters: usize, f: impl FnMut() + Send) -> f64 {
    yolo_core::backend::on_cpu_pool(|| measure_here(cpu, iters, f))
}

fn measure_here(cpu: bool, iters: usize, mut f: impl FnMut()) -> f64 {
    let min = MIN.load(std::sync::atomic::Ordering::Relaxed);
    if !cpu {
        let (median, low) = time_ms(2, iters, f);
        return if min { low } else { median };
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
    if min {
        t[0]
    } else {
        t[t.len() / 2]
    }
}

/// `--min`: report the minimum instead of the median.
static MIN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

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

/// A layer's conv (random weights, with bias, "same" padding) and a random input for it.
fn layer_conv(a: &Args, device: &yolo_core::burn::tensor::Device, c_in: usize, c_out: usize, k: usize, s: usize, div: usize) -> (yolo_core::burn::nn::conv::Conv2d, Tensor<4>) {
    let side = a.imgsz / div;
    let conv = Conv2dConfig::new([c_in, c_out], [k, k])
        .with_stride([s, s])
        .with_padding(PaddingConfig2d::Explicit(k / 2, k / 2, k / 2, k / 2))
        .with_bias(true)
        .init(device);
    (conv, Tensor::<4>::random([a.batch, c_in, side, side], Distribution::Default, device))
}

/// `--in-turn`: each round runs every conv instance once, in the model's order, timing each;
/// per-layer medians (minima with `--min`) over the rounds.
fn in_turn(a: &Args) {
    let device = yolo_core::backend::cpu_device();
    println!("yolov8n convolutions at {0}x{0}, batch {1}, run in turn, {3} of {2} rounds (ms, all instances of the shape)", a.imgsz, a.batch, a.iters, if a.min { "minimum" } else { "median" });
    println!("| layer | c_in→c_out | k/s | in | ours | ours GFLOP/s |");
    println!("|---|---|---|---|---|---|");
    struct Inst {
        layer: usize,
        conv: yolo_core::burn::nn::conv::Conv2d,
        x: Tensor<4>,
        cache: cpu_conv::PackCache,
    }
    let layers: Vec<&Layer> = LAYERS.iter().filter(|l| a.only.as_ref().is_none_or(|o| l.0.contains(o.as_str()))).collect();
    let mut insts = Vec::new();
    for (li, &&(_, c_in, c_out, k, s, div, count)) in layers.iter().enumerate() {
        for _ in 0..count {
            let (conv, x) = layer_conv(a, &device, c_in, c_out, k, s, div);
            insts.push(Inst { layer: li, conv, x, cache: cpu_conv::PackCache::default() });
        }
    }
    let mut times = vec![vec![0.0f64; a.iters.max(1)]; layers.len()];
    yolo_core::backend::on_cpu_pool(|| {
        for round in 0..a.iters.max(1) + 2 {
            for inst in &insts {
                let t = std::time::Instant::now();
                let y = if inst.x.dims()[2] < a.direct_below {
                    cpu_conv::conv2d_with(inst.x.clone(), &inst.conv, Activation::Silu, Method::Direct, Some(&inst.cache))
                } else {
                    cpu_conv::conv2d_cached(inst.x.clone(), &inst.conv, Activation::Silu, &inst.cache)
                };
                std::hint::black_box(y.unwrap_or_else(|_| panic!("refused")));
                if round >= 2 {
                    times[inst.layer][round - 2] += t.elapsed().as_secs_f64() * 1e3;
                }
            }
        }
    });
    let (mut total, mut total_flop) = (0.0, 0.0);
    for (li, &&(name, c_in, c_out, k, s, div, count)) in layers.iter().enumerate() {
        let t = &mut times[li];
        t.sort_by(f64::total_cmp);
        let ms = if a.min { t[0] } else { t[t.len() / 2] };
        let out = a.imgsz / div / s;
        let flop = 2.0 * (a.batch * c_out * out * out * c_in * k * k * count) as f64;
        total += ms;
        total_flop += flop;
        println!("| {name} | {c_in}→{c_out} | {k}/{s} | {} | {ms:.2} | {:.0} |", a.imgsz / div, flop / ms / 1e6);
    }
    println!("| total | | | | {total:.2} | {:.0} |", total_flop / total / 1e6);
}

/// Per-layer times of the training conv kernels (`cpu_conv::{forward, grad_input, grad_weight}`).
fn backward(a: &Args) {
    println!("yolov8n training convolutions at {0}x{0}, batch {1}, {3} of {2} (ms, all instances of the shape)", a.imgsz, a.batch, a.iters, if a.min { "minimum" } else { "median" });
    println!("| layer | c_in→c_out | k/s | in | forward | dX | dW | dW direct | dW im2col | dW shifted | dX GFLOP/s | dW GFLOP/s |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    let mut totals = [0.0; 6];
    let mut flops = 0.0;
    let values = |n: usize, seed: usize| -> Vec<f32> { (0..n).map(|i| (((i + seed) * 7919) % 1000) as f32 / 1000.0 - 0.5).collect() };
    for &(name, c_in, c_out, k, s, div, count) in LAYERS.iter().filter(|l| a.only.as_ref().is_none_or(|o| l.0.contains(o.as_str()))) {
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
                std::hint::black_box(cpu_conv::grad_weight_with(&g, a.batch, &x, &dy, Method::Direct));
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
            "| {name} | {c_in}→{c_out} | {k}/{s} | {side} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.0} | {:.0} |",
            t[0] * n,
            t[1] * n,
            t[2] * n,
            t[3] * n,
            t[4] * n,
            t[5] * n,
            flop / t[1] / 1e6,
            flop / t[2] / 1e6
        );
    }
    println!(
        "| total | | | | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.0} | {:.0} |",
        totals[0],
        totals[1],
        totals[2],
        totals[3],
        totals[4],
        totals[5],
        flops / totals[1] / 1e6,
        flops / totals[2] / 1e6
    );
}

fn main() {
    // Each layer here allocates and frees the same large buffers run after run, which glibc
    // would otherwise return to the kernel and fault in afresh every time (a quarter of a
    // layer's time on large maps).
    yolo_core::backend::keep_freed_memory();
    let a = Args::parse();
    MIN.store(a.min, std::sync::atomic::Ordering::Relaxed);
    if a.kernel {
        return kernel_peak();
    }
    if a.backward {
        return backward(&a);
    }
    if a.in_turn {
        return in_turn(&a);
    }
    let device = yolo_core::backend::cpu_device();
    println!("yolov8n convolutions at {0}x{0}, batch {1}, {3} of {2} (ms, all instances of the shape)", a.imgsz, a.batch, a.iters, if a.min { "minimum" } else { "median" });
    println!("| layer | c_in→c_out | k/s | in | ours | direct | im2col | shifted | burn + silu | ours GFLOP/s |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let (mut total_ours, mut total_burn, mut total_flop) = (0.0, 0.0, 0.0);
    let mut totals = [0.0; 3];
    for &(name, c_in, c_out, k, s, div, count) in LAYERS.iter().filter(|l| a.only.as_ref().is_none_or(|o| l.0.contains(o.as_str()))) {
        let side = a.imgsz / div;
        let (conv, x) = layer_conv(&a, &device, c_in, c_out, k, s, div);
        let cache = cpu_conv::PackCache::default();
        let (ours, _) = (measure(a.cpu_time, a.iters, || {
            let y = cpu_conv::conv2d_cached(x.clone(), &conv, Activation::Silu, &cache).unwrap_or_else(|_| panic!("refused"));
            std::hint::black_box(y);
        }), ());
        let direct_cache = cpu_conv::PackCache::default();
        let direct = if a.ours_only {
            0.0
        } else {
            measure(a.cpu_time, a.iters, || {
                let y = cpu_conv::conv2d_with(x.clone(), &conv, Activation::Silu, Method::Direct, Some(&direct_cache)).unwrap_or_else(|_| panic!("refused"));
                std::hint::black_box(y);
            })
        };
        let by = |m: Method| {
            if a.ours_only {
                return 0.0;
            }
            measure(a.cpu_time, a.iters, || {
                let y = cpu_conv::conv2d_with(x.clone(), &conv, Activation::Silu, m, None).unwrap_or_else(|_| panic!("refused"));
                std::hint::black_box(y);
            })
        };
        let (i2c, taps) = (by(Method::Im2col), by(Method::Shifted));
        let burn = if a.ours_only {
            0.0
        } else {
            measure(a.cpu_time, a.iters, || {
                std::hint::black_box(silu(conv.forward(x.clone())));
            })
        };
        let out = side / s;
        let flop = 2.0 * (a.batch * c_out * out * out * c_in * k * k) as f64;
        let n = count as f64;
        total_ours += ours * n;
        for (t, v) in totals.iter_mut().zip([direct, i2c, taps]) {
            *t += v * n;
        }
        total_burn += burn * n;
        total_flop += flop * n;
        println!(
            "| {name} | {c_in}→{c_out} | {k}/{s} | {side} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.0} |",
            ours * n,
            direct * n,
            i2c * n,
            taps * n,
            burn * n,
            flop / ours / 1e6
        );
    }
    println!(
        "| total | | | | {total_ours:.1} | {:.1} | {:.1} | {:.1} | {total_burn:.1} | {:.0} |",
        totals[0],
        totals[1],
        totals[2],
        total_flop / total_ours / 1e6
    );
}
