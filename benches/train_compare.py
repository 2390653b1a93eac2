#!/usr/bin/env python3
"""Training side by side: yolo-rs (`yolo-train`) and Ultralytics (pip) on the same generated
shapes data with the same settings, in one run.

    cargo build --release -p yolo-train -p yolo-infer
    .venv/bin/pip install ultralytics
    .venv/bin/python benches/train_compare.py --scale n --imgsz 320 --batch 16 --epochs 10

    # the training-quality check of issue #26: 3 seeds each, cluttered data, default recipe
    .venv/bin/python benches/train_compare.py --imgsz 320 --epochs 20 --train 256 --val 64 \
        --clutter 6 --seeds 0,1,2 --out train_compare.json

Both train from scratch with Ultralytics' defaults (optimizer auto, full augmentation) and the
given epochs / batch / nbs, validating every epoch. Reported per framework: training images/s
(train phase only, mean over epochs after the first; Ultralytics timed by its
`on_train_epoch_start/end` callbacks, yolo-rs by its own per-epoch figure), and the final
mAP50 / mAP50-95 of the EMA model on the val split, and the best epoch's (highest mAP50-95) (each framework's own validator, which
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


def best_row(rows):
    """(mAP50, mAP50-95) of the epoch with the highest mAP50-95 in a results.csv."""
    rows = [{k.strip(): v for k, v in r.items()} for r in rows]
    best = max(rows, key=lambda r: float(r["metrics/mAP50-95(B)"] or 0))
    return float(best["metrics/mAP50(B)"]), float(best["metrics/mAP50-95(B)"])


def losses(rows):
    """Per-epoch train losses (box, cls, dfl) of a results.csv."""
    rows = [{k.strip(): v for k, v in r.items()} for r in rows]
    return [[round(float(r[f"train/{k}_loss"]), 4) for k in ("box", "cls", "dfl")] for r in rows]


def run_ours(args, data_yaml, work, seed):
    name = f"ours-seed{seed}"
    cmd = [args.ours, "--seed", str(seed), "--data", data_yaml, "--epochs", str(args.epochs), "--imgsz", str(args.imgsz),
           "--batch", str(args.batch), "--nbs", str(args.nbs), "--project", work, "--name", name,
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
    with open(os.path.join(work, name, "results.csv")) as f:
        rows = list(csv.DictReader(f))
    b50, b5095 = best_row(rows)
    return {
        "seed": seed,
        "best_map50": b50,
        "best_map50_95": b5095,
        "train_losses": losses(rows),
        "images_per_s": sum(ips[1:]) / max(len(ips) - 1, 1) if len(ips) > 1 else ips[0],
        "images_per_s_per_epoch": ips,
        "map50": last.get("map50"),
        "map50_95": last.get("map50_95"),
        "wall_s": wall,
    }


def run_ultralytics(args, data_yaml, work, seed):
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
                device="cpu", workers=0, project=work, name=f"ultralytics-seed{seed}", exist_ok=True,
                amp=False, plots=False, seed=seed, deterministic=True, verbose=False)
    wall = time.time() - t
    with open(os.path.join(work, f"ultralytics-seed{seed}", "results.csv")) as f:
        rows = list(csv.DictReader(f))
    b50, b5095 = best_row(rows)
    n_train = len(os.listdir(os.path.join(os.path.dirname(data_yaml), "images", "train")))
    ips = [n_train / s for s in times]
    last = {k.strip(): v for k, v in rows[-1].items()}
    return {
        "seed": seed,
        "best_map50": b50,
        "best_map50_95": b5095,
        "train_losses": losses(rows),
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
    p.add_argument("--clutter", type=int, default=0, help="unlabelled distractors per image (up to)")
    p.add_argument("--seeds", default="0", help="training seeds, comma-separated (the data is the same)")
    p.add_argument("--ours", default=os.path.join(ROOT, "target", "release", "yolo-train"))
    p.add_argument("--infer", default=os.path.join(ROOT, "target", "release", "yolo-infer"))
    p.add_argument("--only", choices=["ours", "ultralytics"])
    p.add_argument("--data", help="use this data.yaml instead of generating one")
    p.add_argument("--out", help="write the JSON summary here (rewritten after every run)")
    args = p.parse_args()
    seeds = [int(x) for x in args.seeds.split(",")]

    work = tempfile.mkdtemp(prefix="train-compare-")
    if args.data:
        data_yaml = os.path.abspath(args.data)
    else:
        data = os.path.join(work, "shapes")
        subprocess.run([args.infer, "shapes", "--out", data, "--train", str(args.train), "--val", str(args.val),
                        "--imgsz", str(args.imgsz), "--clutter", str(args.clutter)], check=True, capture_output=True)
        data_yaml = os.path.join(data, "data.yaml")
    res = {"settings": vars(args), "cpu_threads": os.cpu_count(), "work": work}
    frameworks = [f for f in ("yolo-rs", "ultralytics") if args.only in (None, {"yolo-rs": "ours"}.get(f, f))]

    def save():
        if args.out:
            with open(args.out + ".tmp", "w") as f:
                json.dump(res, f, indent=2)
            os.replace(args.out + ".tmp", args.out)

    for seed in seeds:
        for fw in frameworks:
            run = run_ours if fw == "yolo-rs" else run_ultralytics
            r = run(args, data_yaml, work, seed)
            res.setdefault(fw, {}).setdefault("runs", []).append(r)
            print(fw, json.dumps(r), flush=True)
            save()
    for fw in frameworks:
        runs = res[fw]["runs"]
        for k in ("best_map50", "best_map50_95", "map50", "map50_95", "images_per_s"):
            v = [r[k] for r in runs]
            mean = sum(v) / len(v)
            res[fw][k] = {"mean": mean, "min": min(v), "max": max(v),
                          "std": (sum((x - mean) ** 2 for x in v) / max(len(v) - 1, 1)) ** 0.5}
    if len(frameworks) == 2:
        ours, ul = res["yolo-rs"], res["ultralytics"]
        res["ratio_images_per_s"] = ours["images_per_s"]["mean"] / ul["images_per_s"]["mean"]
        res["delta_best_map50_95"] = ours["best_map50_95"]["mean"] - ul["best_map50_95"]["mean"]
        print(f"seeds {seeds}: best mAP50-95 yolo-rs {ours['best_map50_95']['mean']:.4f} "
              f"(min {ours['best_map50_95']['min']:.4f}, max {ours['best_map50_95']['max']:.4f}), "
              f"Ultralytics {ul['best_map50_95']['mean']:.4f} "
              f"(min {ul['best_map50_95']['min']:.4f}, max {ul['best_map50_95']['max']:.4f}); "
              f"best mAP50 {ours['best_map50']['mean']:.4f} vs {ul['best_map50']['mean']:.4f}; "
              f"training images/s {ours['images_per_s']['mean']:.2f} vs {ul['images_per_s']['mean']:.2f} "
              f"(ratio {res['ratio_images_per_s']:.2f})")
    save()


if __name__ == "__main__":
    main()
