#!/usr/bin/env python3
"""Side-by-side forward timing: yolo-rs (Burn, default backend) vs onnxruntime vs PyTorch.

    pip install ultralytics onnx onnxruntime safetensors
    python benches/compare.py [--sizes 640 320] [--batch 1] [--threads 2] [--iters 20]

All three run the *same* yolov8n weights (a seeded fresh init of Ultralytics' yolov8n.yaml:
speed does not depend on weight values): PyTorch on the fused model, onnxruntime on
Ultralytics' own ONNX export, yolo-rs on the same state_dict saved as safetensors. Each is
timed in this one run (median of --iters after warm-up) and yolo-rs is reported as a ratio
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


def median_ms(fn, warmup, iters):
    for _ in range(warmup):
        fn()
    t = []
    for _ in range(iters):
        s = time.perf_counter()
        fn()
        t.append((time.perf_counter() - s) * 1e3)
    return float(np.median(t))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[640, 320])
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--scale", default="n")
    a = ap.parse_args()

    from ultralytics import YOLO
    from yolo_safetensors import SCALES, model_config, save_checkpoint
    import onnxruntime as ort

    torch.set_num_threads(a.threads)
    work = tempfile.mkdtemp(prefix="yolo-compare-")
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
        t_ort = median_ms(lambda: sess.run(None, {"images": x}), a.warmup, a.iters)

        fused = YOLO(f"yolov8{a.scale}.yaml")
        fused.model.load_state_dict(net.state_dict())
        fm = fused.model.fuse().eval()
        xt = torch.from_numpy(x)
        with torch.inference_mode():
            t_pt = median_ms(lambda: fm(xt), a.warmup, a.iters)

        out = subprocess.run([exe, "--weights", weights, "--imgsz", str(size), "--batch", str(a.batch),
                              "--warmup", str(a.warmup), "--iters", str(a.iters)],
                             check=True, capture_output=True, text=True,
                             env={**os.environ, "RAYON_NUM_THREADS": str(a.threads)})
        ours = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append((size, ours["median_ms"], t_ort, t_pt))

    print(f"\nyolov8{a.scale} forward, batch {a.batch}, {a.threads} threads, median of {a.iters} (ms)")
    print(f"| size | yolo-rs | onnxruntime {ort.__version__} | PyTorch {torch.__version__} (fused) "
          f"| ratio vs ORT | ratio vs PyTorch |")
    print("|---|---|---|---|---|---|")
    for size, ours, t_ort, t_pt in rows:
        print(f"| {size} | {ours:.1f} | {t_ort:.1f} | {t_pt:.1f} | {ours / t_ort:.2f} | {ours / t_pt:.2f} |")


if __name__ == "__main__":
    main()
