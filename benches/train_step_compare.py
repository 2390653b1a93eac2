#!/usr/bin/env python3
"""Side-by-side train step: yolo-rs (Burn, default backend's autodiff) vs Ultralytics/PyTorch.

    cargo build --release -p yolo-benches --bin train-time
    .venv/bin/pip install ultralytics
    .venv/bin/python benches/train_step_compare.py [--scale n] [--imgsz 320] [--batch 8] [--rounds 3] [--iters 5]

The step is what `yolo-train` and Ultralytics' `BaseTrainer` run per batch: forward in train
mode, the v8 detection loss (TaskAlignedAssigner, BCE, CIoU, DFL), backward, gradient clipping
at norm 10 and a Nesterov SGD step over the three parameter groups (weights with decay 5e-4,
BatchNorm weights, biases). Both get the same deterministic batch (the pixel pattern of
`yolo_benches::input`, three boxes per image placed as in `yolo_benches::TrainStep`) and a
seeded fresh yolov8 with 80 classes; speed does not depend on the weight values. The two take
turns (--rounds of --iters steps after warm-up, median and minimum over all steps) on
--threads threads, and yolo-rs is reported as a ratio (ours / PyTorch; < 1 means faster).
Loss parity is the job of the tests (yolo-train/tests/train_step.rs), not of this script.
"""
import argparse
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tools"))
sys.path.insert(0, os.path.join(ROOT, "tools", "fixtures"))
import oracle_env  # noqa: F401,E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from compare import times_ms  # noqa: E402
from bench_refs import pytorch_train_step as pytorch_step  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", default="n")
    ap.add_argument("--imgsz", type=int, default=320)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--iters", type=int, default=5, help="timed steps per round")
    ap.add_argument("--rounds", type=int, default=3, help="the two take turns this many times")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--exe", default=os.path.join(ROOT, "target", "release", "train-time"))
    a = ap.parse_args()

    torch.set_num_threads(a.threads)
    if not os.path.exists(a.exe):
        print("building train-time (release)...", file=sys.stderr)
        subprocess.run(["cargo", "build", "--release", "-q", "-p", "yolo-benches", "--bin", "train-time"],
                       cwd=ROOT, check=True)
    step = pytorch_step(a.scale, a.batch, a.imgsz)
    t_pt, t_ours = [], []
    for _ in range(a.rounds):
        t_pt += times_ms(step, a.warmup, a.iters)
        out = subprocess.run([a.exe, "--scale", a.scale, "--imgsz", str(a.imgsz), "--batch", str(a.batch),
                              "--warmup", str(a.warmup), "--iters", str(a.iters), "--all"],
                             check=True, capture_output=True, text=True,
                             env={**os.environ, "RAYON_NUM_THREADS": str(a.threads)})
        t_ours += json.loads(out.stdout.strip().splitlines()[-1])["times_ms"]

    med = [float(np.median(t)) for t in (t_ours, t_pt)]
    low = [min(t) for t in (t_ours, t_pt)]
    print(f"\nyolov8{a.scale} train step (forward, v8 loss, backward, clip, SGD), {a.imgsz}x{a.imgsz}, "
          f"batch {a.batch}, {a.threads} threads, {a.rounds} interleaved rounds of {a.iters} steps: "
          f"median (min) in ms")
    print(f"| yolo-rs | PyTorch {torch.__version__} | ratio |")
    print("|---|---|---|")
    print(f"| {med[0]:.0f} ({low[0]:.0f}) | {med[1]:.0f} ({low[1]:.0f}) | {med[0] / med[1]:.2f} ({low[0] / low[1]:.2f}) |")


if __name__ == "__main__":
    main()
