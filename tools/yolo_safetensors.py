"""Write a YOLOv8 state_dict as the safetensors checkpoint yolo-rs reads.

Layout: Ultralytics' own keys (`model.0.conv.weight` ... `model.22.dfl.conv.weight`), float
tensors as F32, plus metadata: format, model (JSON ModelConfig), names (JSON list), imgsz.
"""
import json

import torch
from safetensors.torch import save_file

FORMAT = "yolo-rs/1"
SCALES = {
    "n": [0.33, 0.25, 1024],
    "s": [0.33, 0.50, 1024],
    "m": [0.67, 0.75, 768],
    "l": [1.00, 1.00, 512],
    "x": [1.00, 1.25, 512],
}


def model_config(depth, width, max_channels, nc, scale=None, reg_max=16):
    if scale is not None and SCALES.get(scale) != [depth, width, max_channels]:
        scale = None  # custom multiples under a published name
    return {
        "scale": scale,
        "multiples": {"depth": depth, "width": width, "max_channels": max_channels},
        "nc": nc,
        "reg_max": reg_max,
    }


def save_checkpoint(state_dict, path, config, names, imgsz, extra=None):
    tensors = {}
    for k, v in state_dict.items():
        v = v.detach().cpu()
        if v.is_floating_point():
            v = v.float()
        tensors[k] = v.contiguous()
    meta = {
        "format": FORMAT,
        "model": json.dumps(config),
        "names": json.dumps(list(names)),
        "imgsz": str(int(imgsz)),
    }
    for k, v in (extra or {}).items():
        meta[f"extra.{k}"] = str(v)
    save_file(tensors, path, metadata=meta)
