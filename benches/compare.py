#!/usr/bin/env python3
"""Side-by-side forward timing: yolo-rs (Burn, default backend) vs onnxruntime vs PyTorch.

    pip install ultralytics onnx onnxruntime safetensors
    python benches/compare.py [--sizes 640 320] [--batch 1] [--threads 2] [--rounds 3] [--iters 10]

All three run the *same* yolov8n weights (a seeded fresh init of Ultralytics' yolov8n.yaml:
speed does not depend on weight values): PyTorch on the fused model, onnxruntime on
Ultralytics' own ONNX export, yolo-rs on the same state_dict saved as safetensors. Each is
timed in this one run, taking turns (--rounds of --iters runs after warm-up; median and
minimum over all runs) and yolo-rs is reported as a ratio
(ours / theirs; < 1 means faster). Output parity is the job of the tests, not of this script.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tools"))
import oracle_env  # noqa: F401,E402

import numpy as np  # noqa: E402
import torch  # noqa: E402


def times_ms(fn, warmup, iters):
    for _ in range(warmup):
        fn()
    t = []
    for _ in range(iters):
        s = time.perf_counter()
        fn()
        t.append((time.perf_counter() - s) * 1e3)
    return t


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[640, 320])
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--iters", type=int, default=10, help="timed runs per round")
    ap.add_argument("--rounds", type=int, default=3,
                    help="the three runtimes take turns this many times (a shared machine's "
                         "speed drifts; interleaving exposes all three to the same drift)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--scale", default="n")
    ap.add_argument("--work", help="folder for the weights and ONNX files (kept; default: a new "
                                    "temporary folder)")
    a = ap.parse_args()

    from ultralytics import YOLO
    from yolo_safetensors import SCALES, model_config, save_checkpoint
    import onnxruntime as ort

    torch.set_num_threads(a.threads)
    work = os.path.abspath(a.work) if a.work else tempfile.mkdtemp(prefix="yolo-compare-")
    os.makedirs(work, exist_ok=True)
    os.chdir(work)  # Ultralytics writes its ONNX export into the current folder
    torch.manual_seed(0)
    yolo = YOLO(f"yolov8{a.scale}.yaml")
    net = yolo.model.eval()
    weights = os.path.join(work, "model.safetensors")
    d, w, mc = SCALES[a.scale]
    save_checkpoint(net.state_dict(), weights, model_config(d, w, mc, 80, scale=a.scale),
                    [str(i) for i in range(80)], 640)

    print("building yolo-time (release)...", file=sys.stderr)
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "yolo-benches", "--bin", "yolo-time"],
                   cwd=ROOT, check=True)
    exe = os.path.join(ROOT, "target", "release", "yolo-time")

    rows = []
    for size in a.sizes:
        onnx_path = yolo.export(format="onnx", imgsz=size, opset=17, simplify=False, batch=a.batch)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = a.threads
        sess = ort.InferenceSession(onnx_path, opts, providers=["CPUExecutionProvider"])
        x = np.random.default_rng(0).random((a.batch, 3, size, size), dtype=np.float32)
        fused = YOLO(f"yolov8{a.scale}.yaml")
        fused.model.load_state_dict(net.state_dict())
        fm = fused.model.fuse().eval()
        xt = torch.from_numpy(x)

        t_ort, t_pt, t_ours = [], [], []
        for _ in range(a.rounds):
            t_ort += times_ms(lambda: sess.run(None, {"images": x}), a.warmup, a.iters)
            with torch.inference_mode():
                t_pt += times_ms(lambda: fm(xt), a.warmup, a.iters)
            out = subprocess.run([exe, "--weights", weights, "--imgsz", str(size), "--batch", str(a.batch),
                                  "--warmup", str(a.warmup), "--iters", str(a.iters), "--all"],
                                 check=True, capture_output=True, text=True,
                                 env={**os.environ, "RAYON_NUM_THREADS": str(a.threads)})
            t_ours += json.loads(out.stdout.strip().splitlines()[-1])["times_ms"]
        rows.append((size, t_ours, t_ort, t_pt))

    n = a.rounds * a.iters
    print(f"\nyolov8{a.scale} forward, batch {a.batch}, {a.threads} threads, {a.rounds} interleaved "
          f"rounds of {a.iters} runs: median (min) in ms")
    print(f"| size | yolo-rs | onnxruntime {ort.__version__} | PyTorch {torch.__version__} (fused) "
          f"| ratio vs ORT | ratio vs PyTorch |")
    print("|---|---|---|---|---|---|")
    for size, ours, t_ort, t_pt in rows:
        med = [float(np.median(t)) for t in (ours, t_ort, t_pt)]
        low = [min(t) for t in (ours, t_ort, t_pt)]
        assert all(len(t) == n for t in (ours, t_ort, t_pt))
        print(f"| {size} | {med[0]:.1f} ({low[0]:.1f}) | {med[1]:.1f} ({low[1]:.1f}) | {med[2]:.1f} ({low[2]:.1f}) "
              f"| {med[0] / med[1]:.2f} ({low[0] / low[1]:.2f}) | {med[0] / med[2]:.2f} ({low[0] / low[2]:.2f}) |")

if __name__ == "__main__":
    main()
