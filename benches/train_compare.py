#!/usr/bin/env python3
"""Training side by side: yolo-rs (`yolo-train`) and Ultralytics (pip) on the same generated
shapes data with the same settings, in one run.

    cargo build --release -p yolo-train -p yolo-infer
    .venv/bin/pip install ultralytics
    .venv/bin/python benches/train_compare.py --scale n --imgsz 320 --batch 16 --epochs 10

Both train from scratch with Ultralytics' defaults (optimizer auto, full augmentation) and the
given epochs / batch / nbs, validating every epoch. Reported per framework: training images/s
(train phase only, mean over epochs after the first; Ultralytics timed by its
`on_train_epoch_start/end` callbacks, yolo-rs by its own per-epoch figure), and the final
mAP50 / mAP50-95 of the EMA model on the val split (each framework's own validator, which
agree on the same weights: see yolo-core/tests/val.rs). Ultralytics runs with `workers=0`
(data loading in the training process) like yolo-rs, which loads in the training thread;
both use all cores for the math. Writes a JSON summary with --out.
"""
import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tools"))

# (depth, width, max_channels) of yolov8.yaml's scales.
SCALES = {"n": (0.33, 0.25, 1024), "s": (0.33, 0.50, 1024), "m": (0.67, 0.75, 768), "l": (1.0, 1.0, 512),
          "x": (1.0, 1.25, 512)}


def run_ours(args, data_yaml, work):
    cmd = [args.ours, "--data", data_yaml, "--epochs", str(args.epochs), "--imgsz", str(args.imgsz),
           "--batch", str(args.batch), "--nbs", str(args.nbs), "--project", work, "--name", "ours",
           "--exist-ok", "--json"]
    if args.width is not None:
        cmd += ["--width-multiple", str(args.width), "--depth-multiple", str(args.depth)]
    else:
        cmd += ["--scale", args.scale]
    t = time.time()
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    wall = time.time() - t
    epochs = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    ips = [e["images_per_s"] for e in epochs]
    last = epochs[-1]["metrics"] or {}
    return {
        "images_per_s": sum(ips[1:]) / max(len(ips) - 1, 1) if len(ips) > 1 else ips[0],
        "images_per_s_per_epoch": ips,
        "map50": last.get("map50"),
        "map50_95": last.get("map50_95"),
        "wall_s": wall,
    }


def run_ultralytics(args, data_yaml, work):
    import oracle_env  # noqa: F401
    import yaml
    from ultralytics import YOLO
    from ultralytics.nn.tasks import yaml_model_load

    cfg = dict(yaml_model_load("yolov8n.yaml"))
    cfg["scales"] = {"t": list((args.depth, args.width, 1024) if args.width is not None else SCALES[args.scale])}
    cfg.pop("scale", None)
    cfg.pop("yaml_file", None)
    with open(data_yaml) as f:
        cfg["nc"] = len(yaml.safe_load(f)["names"])
    model_yaml = os.path.join(work, "model.yaml")
    with open(model_yaml, "w") as f:
        yaml.safe_dump(cfg, f)
    model = YOLO(model_yaml)
    times, start = [], {}
    model.add_callback("on_train_epoch_start", lambda tr: start.__setitem__("t", time.time()))
    model.add_callback("on_train_epoch_end", lambda tr: times.append(time.time() - start["t"]))
    t = time.time()
    model.train(data=data_yaml, epochs=args.epochs, imgsz=args.imgsz, batch=args.batch, nbs=args.nbs,
                device="cpu", workers=0, project=work, name="ultralytics", exist_ok=True, amp=False,
                plots=False, seed=0, deterministic=True, verbose=False)
    wall = time.time() - t
    with open(os.path.join(work, "ultralytics", "results.csv")) as f:
        rows = list(csv.DictReader(f))
    n_train = len(os.listdir(os.path.join(os.path.dirname(data_yaml), "images", "train")))
    ips = [n_train / s for s in times]
    last = {k.strip(): v for k, v in rows[-1].items()}
    return {
        "images_per_s": sum(ips[1:]) / max(len(ips) - 1, 1) if len(ips) > 1 else ips[0],
        "images_per_s_per_epoch": ips,
        "map50": float(last["metrics/mAP50(B)"]),
        "map50_95": float(last["metrics/mAP50-95(B)"]),
        "wall_s": wall,
    }


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scale", default="n")
    p.add_argument("--width", type=float, help="custom width multiple instead of --scale")
    p.add_argument("--depth", type=float, default=0.33)
    p.add_argument("--imgsz", type=int, default=320)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--nbs", type=int, default=64)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--train", type=int, default=200, help="generated training images")
    p.add_argument("--val", type=int, default=50)
    p.add_argument("--ours", default=os.path.join(ROOT, "target", "release", "yolo-train"))
    p.add_argument("--infer", default=os.path.join(ROOT, "target", "release", "yolo-infer"))
    p.add_argument("--only", choices=["ours", "ultralytics"])
    p.add_argument("--out", help="write the JSON summary here")
    args = p.parse_args()

    work = tempfile.mkdtemp(prefix="train-compare-")
    data = os.path.join(work, "shapes")
    subprocess.run([args.infer, "shapes", "--out", data, "--train", str(args.train), "--val", str(args.val),
                    "--imgsz", str(args.imgsz)], check=True, capture_output=True)
    data_yaml = os.path.join(data, "data.yaml")
    res = {"settings": vars(args), "cpu_threads": os.cpu_count()}
    if args.only != "ultralytics":
        res["yolo-rs"] = run_ours(args, data_yaml, work)
        print("yolo-rs", json.dumps(res["yolo-rs"]), flush=True)
    if args.only != "ours":
        res["ultralytics"] = run_ultralytics(args, data_yaml, work)
        print("ultralytics", json.dumps(res["ultralytics"]), flush=True)
    if "yolo-rs" in res and "ultralytics" in res:
        r = res["yolo-rs"]["images_per_s"] / res["ultralytics"]["images_per_s"]
        res["ratio_images_per_s"] = r
        print(f"training images/s: yolo-rs {res['yolo-rs']['images_per_s']:.2f}, "
              f"Ultralytics {res['ultralytics']['images_per_s']:.2f} (ratio {r:.2f}); "
              f"mAP50-95 after {args.epochs} epochs: yolo-rs {res['yolo-rs']['map50_95']:.4f}, "
              f"Ultralytics {res['ultralytics']['map50_95']:.4f}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
