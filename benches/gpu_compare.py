#!/usr/bin/env python3
"""Side-by-side GPU timing: yolo-rs on a Burn GPU backend (`wgpu` by default) vs PyTorch on CUDA.

    cargo build --release -p yolo-benches --bin yolo-time --bin train-time --features wgpu
    python benches/gpu_compare.py --exe-dir target/release [--sizes 640 320] [--batches 1 8]

Needs torch and ultralytics (to build the model and its weights); no onnxruntime, no cargo (the
binaries are given, built with the GPU feature on another machine if need be:
`benches/gpu/prepare.sh` and `benches/gpu/run.sh` do that for a lent GPU machine).

Inference: yolov8 (seeded fresh init of Ultralytics' yaml; speed does not depend on the
values) as `compare.py` runs it, BatchNorm folded on both sides, fp32 on both sides: yolo-rs's
`yolo-time` (forward and decode, the output read back to the host, the input already on the
device) against PyTorch's fused model on the same weights (the input on the GPU, the decoded
output copied to the host: `.cpu()` waits for the GPU, as `into_data` does for ours).
Training: `train-time` against Ultralytics' model, loss and SGD step on the same GPU, as
`train_step_compare.py` runs them, with the GPU synchronised after every step. The runtimes
take turns (--rounds of --iters runs after --warmup); medians and minima of all runs, and
yolo-rs as a ratio (ours / PyTorch; < 1 means faster).

Without CUDA, PyTorch runs on the CPU and the table says so (a dry run of the script:
`BURN_DEVICE=wgpu` then runs on whatever adapter wgpu finds, e.g. Mesa's lavapipe).
"""
import argparse
import copy
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(ROOT, "tools"))
sys.path.insert(0, os.path.join(ROOT, "tools", "fixtures"))
import oracle_env  # noqa: F401,E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from compare import times_ms  # noqa: E402


def synced(fn, dev):
    """`fn` then a wait for the device, so that a timing covers the GPU's work."""
    def run():
        fn()
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
    return run


def variant_env(variant):
    """`BURN_DEVICE` and `YOLO_RS_GPU_CONV` of a variant `backend[+conv]` (`cuda`, `cuda+direct`)."""
    backend, _, conv = variant.partition("+")
    env = {**os.environ, "BURN_DEVICE": backend}
    env.pop("YOLO_RS_GPU_CONV", None)
    if conv:
        env["YOLO_RS_GPU_CONV"] = conv
    return env


def ours(exe, args, variant, timeout_s):
    env = variant_env(variant)
    try:
        # A bound on each run: a hung GPU run is reported as failed and the next one starts.
        out = subprocess.run([exe, *map(str, args), "--all"], capture_output=True, text=True, env=env,
                             timeout=timeout_s)
    except subprocess.TimeoutExpired as e:
        print(f"{os.path.basename(exe)} {' '.join(map(str, args))}: no result after {e.timeout} s", file=sys.stderr)
        return None, "?"
    if out.returncode != 0:
        print(f"{os.path.basename(exe)} {' '.join(map(str, args))} failed ({out.returncode}):\n{out.stderr[-4000:]}",
              file=sys.stderr)
        return None, "?"
    line = json.loads(out.stdout.strip().splitlines()[-1])
    # The warm-up runs' times: a first GPU run compiles (and autotunes) its kernels.
    warm = line.get("warmup_ms") or []
    print(f"  {os.path.basename(exe)} {variant}: warm-up " + ", ".join(f"{t:.0f}" for t in warm) + " ms",
          file=sys.stderr, flush=True)
    return line["times_ms"], line.get("device", "?")


def ours_round(exe, args, variants, t_ours, timeout_s, devices):
    """One run of `exe args` per variant, its times appended to `t_ours[i]`. A variant that
    fails becomes None and is skipped from then on (its row says "failed")."""
    for i, variant in enumerate(variants):
        if t_ours[i] is None:
            continue
        t, dev_name = ours(exe, args, variant, timeout_s)
        if t is None:
            t_ours[i] = None
            continue
        t_ours[i] += t
        devices[variant] = dev_name


def stats(t):
    return float(np.median(t)), min(t)


def row(label, t_ours, t_pt):
    """One table row: PyTorch, then each variant's time and its ratio to PyTorch."""
    mp, lp = stats(t_pt)
    cells = [label, f"{mp:.2f} ({lp:.2f})"]
    for t in t_ours:
        if not t:  # yolo-rs failed or ran out of time (its error is on stderr)
            cells += ["failed", "–"]
        else:
            mo, lo = stats(t)
            cells += [f"{mo:.2f} ({lo:.2f})", f"{mo / mp:.2f} ({lo / lp:.2f})"]
    return "| " + " | ".join(cells) + " |"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--exe-dir", default=os.path.join(ROOT, "target", "release"),
                    help="folder holding yolo-time and train-time built with the GPU feature")
    ap.add_argument("--backend", nargs="+", default=["wgpu"],
                    help="yolo-rs variants, each BURN_DEVICE[+YOLO_RS_GPU_CONV]: e.g. cuda cuda+direct wgpu "
                         "(each is timed beside the same PyTorch runs)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[640, 320])
    ap.add_argument("--batches", type=int, nargs="*", default=[1, 8], help="none: no forward rows")
    ap.add_argument("--train-imgsz", type=int, default=640)
    ap.add_argument("--train-batch", type=int, default=16)
    ap.add_argument("--no-train", action="store_true")
    ap.add_argument("--amp-only", action="store_true",
                    help="only the AMP train step row (with --amp): the fp32 step is another phase's")
    ap.add_argument("--amp", action="store_true",
                    help="also the train step with mixed precision: Ultralytics' AMP step (autocast f16 + "
                         "GradScaler) against train-time --amp")
    ap.add_argument("--precision", nargs="+", choices=["fp32", "fp16"], default=["fp32"],
                    help="forward rows in these precisions; fp16: PyTorch's fused model .half() on a half "
                         "input (Ultralytics' half=True) against yolo-time --half")
    ap.add_argument("--iters", type=int, default=20, help="timed runs per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--scale", default="n")
    ap.add_argument("--ours-timeout", type=float, default=240,
                    help="seconds one yolo-rs run may take (a hung GPU run is reported as failed)")
    ap.add_argument("--work", help="folder for the weights (default: a new temporary folder)")
    a = ap.parse_args()

    from ultralytics import YOLO
    from yolo_safetensors import SCALES, model_config, save_checkpoint

    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    gpu = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "CPU (no CUDA: a dry run)"
    # fp32 on both sides: no TF32 in PyTorch's convolutions and matrix products either.
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.benchmark = True
    a.exe_dir = os.path.abspath(a.exe_dir)  # before the chdir to the work folder
    yolo_time = os.path.join(a.exe_dir, "yolo-time")
    train_time = os.path.join(a.exe_dir, "train-time")

    work = os.path.abspath(a.work) if a.work else tempfile.mkdtemp(prefix="yolo-gpu-compare-")
    os.makedirs(work, exist_ok=True)
    os.chdir(work)
    torch.manual_seed(0)
    net = YOLO(f"yolov8{a.scale}.yaml").model.eval()
    weights = os.path.join(work, "model.safetensors")
    d, w, mc = SCALES[a.scale]
    save_checkpoint(net.state_dict(), weights, model_config(d, w, mc, 80, scale=a.scale),
                    [str(i) for i in range(80)], 640)
    fused = YOLO(f"yolov8{a.scale}.yaml")
    fused.model.load_state_dict(net.state_dict())
    fm = fused.model.fuse().eval().to(dev)

    fm_half = copy.deepcopy(fm).half() if "fp16" in a.precision else None

    lines, ours_dev = [], {}
    for precision in a.precision:
        half = precision == "fp16"
        model = fm_half if half else fm
        for batch in a.batches:
            for size in a.sizes:
                x = torch.from_numpy(np.random.default_rng(0).random((batch, 3, size, size), dtype=np.float32)).to(dev)
                x = x.half() if half else x
                t_ours, t_pt = [[] for _ in a.backend], []
                for _ in range(a.rounds):
                    with torch.inference_mode():
                        t_pt += times_ms(synced(lambda: model(x)[0].cpu(), dev), a.warmup, a.iters)
                    ours_round(yolo_time, ["--weights", weights, "--imgsz", size, "--batch", batch, "--warmup", a.warmup,
                                           "--iters", a.iters] + (["--half"] if half else []),
                               a.backend, t_ours, a.ours_timeout, ours_dev)
                lines.append(row(f"forward {size}x{size}, batch {batch}" + (", f16" if half else ""), t_ours, t_pt))
                print(lines[-1], file=sys.stderr, flush=True)

    if not a.no_train:
        from bench_refs import pytorch_train_step as pytorch_step

        steps = max(a.iters // 4, 3)  # a step takes several forwards' time
        for amp in ([True] if a.amp_only else [False, True]) if a.amp else [False]:
            step = pytorch_step(a.scale, a.train_batch, a.train_imgsz, dev, amp=amp)
            t_ours, t_pt = [[] for _ in a.backend], []
            for _ in range(a.rounds):
                t_pt += times_ms(synced(step, dev), 2, steps)
                ours_round(train_time, ["--scale", a.scale, "--imgsz", a.train_imgsz, "--batch", a.train_batch,
                                        "--warmup", 2, "--iters", steps] + (["--amp"] if amp else []),
                           a.backend, t_ours, a.ours_timeout, ours_dev)
            what = f"train step {a.train_imgsz}x{a.train_imgsz}, batch {a.train_batch}" + (", AMP (f16)" if amp else "")
            lines.append(row(what, t_ours, t_pt))
            print(lines[-1], file=sys.stderr, flush=True)
            del step

    devices = ", ".join(f"{v} on {d}" for v, d in ours_dev.items())
    print(f"\nyolov8{a.scale}, fp32 (f16 rows: the half model on both sides; AMP rows: f16 autocast + loss scaling on both sides), {a.rounds} interleaved rounds: median (min) in ms; "
          f"yolo-rs {devices} (variant = BURN_DEVICE[+YOLO_RS_GPU_CONV]), PyTorch {torch.__version__} on {gpu}")
    print("| work | PyTorch | " + " | ".join(f"yolo-rs {v} | ratio" for v in a.backend) + " |")
    print("|---" * (2 + 2 * len(a.backend)) + "|")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
