#!/usr/bin/env python3
"""onnxruntime latency of yolo-export's ONNX against Ultralytics' ONNX export of the same weights.

    pip install ultralytics onnx onnxruntime onnxslim safetensors
    cargo build --release -p yolo-export
    python benches/onnx_compare.py [--sizes 640 320] [--batch 1] [--threads 2] [--rounds 5] [--iters 10]

Both files hold the same yolov8n weights (a seeded fresh init of Ultralytics' yolov8n.yaml:
speed does not depend on weight values) at opset 17: ours written by the yolo-export binary
from the state_dict saved as safetensors, Ultralytics' by its exporter, with its default
onnxslim simplification and without it. Each runs in onnxruntime on the CPU
(--threads intra-op threads, default graph optimisations) in this one process, taking turns
(--rounds of --iters runs after warm-up); median and minimum over all runs, and the ratio
ours / theirs (< 1: ours faster). The outputs are checked to agree first (same weights, same
input): a speed comparison of different computations would mean nothing.
"""
import argparse
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
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iters", type=int, default=10, help="timed runs per round")
    ap.add_argument("--rounds", type=int, default=5, help="the files take turns this many times")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--exe", default=os.path.join(ROOT, "target", "release", "yolo-export"))
    ap.add_argument("--work", help="folder for the weights and ONNX files (default: a new temporary folder)")
    a = ap.parse_args()

    import onnxruntime as ort
    from ultralytics import YOLO
    from yolo_safetensors import SCALES, model_config, save_checkpoint

    assert os.path.exists(a.exe), f"{a.exe} missing: cargo build --release -p yolo-export"
    work = os.path.abspath(a.work) if a.work else tempfile.mkdtemp(prefix="yolo-onnx-compare-")
    os.makedirs(work, exist_ok=True)
    os.chdir(work)  # Ultralytics writes its ONNX export into the current folder
    torch.manual_seed(0)
    yolo = YOLO("yolov8n.yaml")
    net = yolo.model.eval()
    weights = os.path.join(work, "yolov8n.safetensors")
    d, w, mc = SCALES["n"]
    save_checkpoint(net.state_dict(), weights, model_config(d, w, mc, 80, scale="n"), [str(i) for i in range(80)], 640)

    def session(path):
        so = ort.SessionOptions()
        so.intra_op_num_threads = a.threads
        so.inter_op_num_threads = 1
        return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])

    rows = []
    for size in a.sizes:
        files = {}
        for simplify in (True, False):
            p = yolo.export(format="onnx", imgsz=size, opset=17, simplify=simplify, batch=a.batch)
            files["ultralytics" + ("" if simplify else " (no slim)")] = dst = os.path.join(
                work, f"ultralytics_{size}_{'slim' if simplify else 'plain'}.onnx")
            os.replace(p, dst)
        ours = os.path.join(work, f"ours_{size}.onnx")
        subprocess.run([a.exe, "-w", weights, "-o", ours, "--imgsz", str(size), "--batch", str(a.batch)],
                       check=True, capture_output=True)
        files = {"yolo-rs": ours, **files}
        sess = {k: session(p) for k, p in files.items()}
        x = np.random.default_rng(0).random((a.batch, 3, size, size), dtype=np.float32)
        outs = {k: s.run(None, {"images": x})[0] for k, s in sess.items()}
        ref = outs["ultralytics"]
        for k, y in outs.items():
            err = np.abs(y - ref) / np.maximum(np.abs(ref), 1.0)
            assert y.shape == ref.shape and err.max() < 1e-4, f"{k}: outputs differ ({err.max()})"
        times = {k: [] for k in sess}
        for _ in range(a.rounds):
            for k, s in sess.items():
                times[k] += times_ms(lambda: s.run(None, {"images": x}), a.warmup, a.iters)
        rows.append((size, times, {k: len(s.get_modelmeta().custom_metadata_map) for k, s in sess.items()}))

    n = a.rounds * a.iters
    print(f"\nyolov8n, onnxruntime {ort.__version__} CPU, batch {a.batch}, {a.threads} threads, {a.rounds} "
          f"interleaved rounds of {a.iters} runs: median (min) in ms")
    print("| size | yolo-rs | Ultralytics (onnxslim) | Ultralytics (no slim) | ratio vs slim | ratio vs no slim |")
    print("|---|---|---|---|---|---|")
    for size, t, _ in rows:
        assert all(len(v) == n for v in t.values())
        med = {k: float(np.median(v)) for k, v in t.items()}
        low = {k: min(v) for k, v in t.items()}
        o, s, p = "yolo-rs", "ultralytics", "ultralytics (no slim)"
        print(f"| {size} | {med[o]:.1f} ({low[o]:.1f}) | {med[s]:.1f} ({low[s]:.1f}) | {med[p]:.1f} ({low[p]:.1f}) "
              f"| {med[o] / med[s]:.3f} ({low[o] / low[s]:.3f}) | {med[o] / med[p]:.3f} ({low[o] / low[p]:.3f}) |")


if __name__ == "__main__":
    main()
