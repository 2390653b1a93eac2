#!/usr/bin/env python3
"""Convert an Ultralytics YOLOv8 detection checkpoint (.pt) into the safetensors file yolo-rs loads.

    pip install ultralytics safetensors
    python tools/convert_ultralytics.py yolov8n.pt yolov8n.safetensors

The .pt holds pickled Ultralytics classes, so the ultralytics package must be importable.
The EMA weights are used when present (what Ultralytics itself evaluates and exports), else
the model weights. Tensors keep Ultralytics' names and are written as F32; the metadata holds
the scale, class count, class names and training image size.
"""
import argparse
import sys

sys.path.insert(0, __import__("os").path.dirname(__file__))
import oracle_env  # noqa: F401,E402  (offline setup before importing ultralytics)
import torch  # noqa: E402

from yolo_safetensors import model_config, save_checkpoint  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src", help="Ultralytics checkpoint (.pt)")
    ap.add_argument("dst", help="output .safetensors")
    ap.add_argument("--imgsz", type=int, default=None, help="override the stored image size")
    a = ap.parse_args()

    ckpt = torch.load(a.src, map_location="cpu", weights_only=False)
    model = (ckpt.get("ema") or ckpt["model"]) if isinstance(ckpt, dict) else ckpt
    yaml = model.yaml
    head = yaml["head"][-1]
    if head[2] != "Detect" or len(yaml["backbone"]) + len(yaml["head"]) != 23:
        sys.exit(f"{a.src}: not a YOLOv8 detection model (head {head[2]}, "
                 f"{len(yaml['backbone']) + len(yaml['head'])} layers)")
    scale = yaml.get("scale")
    scales = yaml.get("scales")
    if scales:
        if scale not in scales:  # as Ultralytics' parse_model: the first scale of the yaml
            scale = next(iter(scales))
        depth, width, max_ch = scales[scale]
    else:
        depth, width, max_ch = yaml["depth_multiple"], yaml["width_multiple"], yaml.get("max_channels", 1024)
    nc = int(yaml["nc"])
    names = model.names
    names = [names[i] for i in range(nc)] if isinstance(names, dict) else list(names)
    train_args = (ckpt.get("train_args") or {}) if isinstance(ckpt, dict) else {}
    imgsz = a.imgsz or train_args.get("imgsz", 640)
    cfg = model_config(depth, width, max_ch, nc, scale=scale, reg_max=int(model.model[-1].reg_max))
    save_checkpoint(model.float().state_dict(), a.dst, cfg, names, imgsz,
                    extra={"source": a.src})
    print(f"wrote {a.dst}: scale={scale} nc={nc} imgsz={imgsz}")


if __name__ == "__main__":
    main()
