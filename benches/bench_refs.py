#!/usr/bin/env python3
"""The reference runtimes of `yolo-bench` (onnxruntime, PyTorch / Ultralytics), as a worker
process that the Rust binary drives over stdin/stdout, so that each reference runs in the same
run as ours, taking turns with it.

    yolo-bench --python /path/to/python    # writes this file (embedded in the binary) and runs it

Protocol: one JSON object per line. On start the worker answers `hello` with the runtimes it
can import and their versions; then each request `{"op": ...}` gets one answer, `{"ok": true,
...}` or `{"ok": false, "error": "..."}`. Everything the libraries print goes to stderr (the
protocol has the real stdout to itself), which yolo-bench keeps in `refs.log`.

- `prepare`: for one (scale, imgsz, batch), builds what can be built: onnxruntime on our ONNX
  (`ours_onnx`, written by yolo-export), onnxruntime on Ultralytics' own ONNX export of the
  same weights, and Ultralytics' fused PyTorch model with the same weights (our checkpoint is
  the Ultralytics state_dict layout). Checks that the outputs agree (same weights, same input).
- `time`: `iters` timed runs of one prepared runtime after `warmup` runs, in ms (fewer, at
  least 3, when they would take more than `budget_s`; so for `nms` and `letterbox`).
- `nms`: Ultralytics' `non_max_suppression` on a raw `[1, 4 + nc, A]` float32 file.
- `letterbox`: Ultralytics' `LetterBox` (cv2) on an image file.
- `prepare_train_step`: Ultralytics' train step (forward, v8 loss, backward, clip, Nesterov
  SGD), the step of `benches/train_step_compare.py`, to be timed with `time`.
- `train`: Ultralytics' `model.train` on a data.yaml, images/s of each epoch's train phase.

Needs numpy; each runtime is used where importable (onnxruntime; torch + ultralytics;
safetensors to load our weights into PyTorch).
"""
import json
import os
import shutil
import sys
import tempfile
import time
import traceback

# Run as the worker, the protocol gets the real stdout and anything printed by a library (from
# the imports below on) goes to stderr. Imported (benches/train_step_compare.py and
# gpu_compare.py take the train step from here), stdout stays as it is.
PROTO = None
if __name__ == "__main__":
    PROTO = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr

# Offline use of the Ultralytics package (as tools/oracle_env.py): no update checks, no font
# download, a private settings folder.
_cfg = os.path.join(tempfile.gettempdir(), "yolo-rs-ultralytics-config")
os.makedirs(_cfg, exist_ok=True)
os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_CONFIG_DIR", _cfg)
os.environ.setdefault("YOLO_VERBOSE", "False")

import numpy as np  # noqa: E402

VERSIONS = {"python": sys.version.split()[0], "numpy": np.__version__}
try:
    import onnxruntime as ort

    VERSIONS["onnxruntime"] = ort.__version__
except Exception:  # noqa: BLE001 - any import failure means "not available"
    ort = None
try:
    import torch

    VERSIONS["torch"] = torch.__version__
except Exception:  # noqa: BLE001
    torch = None
try:
    if torch is None:
        raise ImportError("torch")
    _font = os.path.join(_cfg, "Arial.ttf")
    if not os.path.exists(_font):
        try:
            import matplotlib

            shutil.copy(os.path.join(os.path.dirname(matplotlib.__file__), "mpl-data", "fonts", "ttf",
                                     "DejaVuSans.ttf"), _font)
        except Exception:  # noqa: BLE001 - only plots need the font
            pass
    import ultralytics

    VERSIONS["ultralytics"] = ultralytics.__version__
except Exception:  # noqa: BLE001
    ultralytics = None
try:
    from safetensors.numpy import load_file as load_safetensors

    import safetensors

    VERSIONS["safetensors"] = safetensors.__version__
except Exception:  # noqa: BLE001
    load_safetensors = None

PREPARED = {}


def times_ms(fn, warmup, iters, sync=None, budget_s=None):
    """`iters` timed runs after `warmup`; with `budget_s`, fewer (at least 3) when the runs
    would take longer than that (a reference much slower than ours must not stall the suite)."""
    for _ in range(warmup):
        fn()
    if sync:
        sync()
    out = []
    start = time.perf_counter()
    for _ in range(iters):
        s = time.perf_counter()
        fn()
        if sync:
            sync()
        out.append((time.perf_counter() - s) * 1e3)
        if budget_s is not None and len(out) >= 3 and time.perf_counter() - start > budget_s:
            break
    return out


def cuda_wanted(req):
    return req.get("device") == "cuda" and torch is not None and torch.cuda.is_available()


def torch_model(scale, weights):
    """Ultralytics' yolov8<scale> with the checkpoint's weights (eval mode, not fused)."""
    from ultralytics import YOLO

    yolo = YOLO(f"yolov8{scale}.yaml")
    sd = {k: torch.from_numpy(v.copy()) for k, v in load_safetensors(weights).items()}
    missing, unexpected = yolo.model.load_state_dict(sd, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise ValueError(f"{weights}: missing {missing[:5]}, unexpected {unexpected[:5]}")
    yolo.model.eval()
    return yolo


def ort_session(path, threads, cuda):
    """A session and its runtime's name prefix ("onnxruntime" or "onnxruntime CUDA")."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    providers = ["CPUExecutionProvider"]
    if cuda and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    sess = ort.InferenceSession(path, so, providers=providers)
    on_cuda = sess.get_providers()[0] == "CUDAExecutionProvider"
    return sess, "onnxruntime CUDA" if on_cuda else "onnxruntime"


def op_prepare(req):
    key, scale, size, batch = req["key"], req["scale"], req["imgsz"], req["batch"]
    threads, work = req["threads"], req["work"]
    cuda = cuda_wanted(req)
    # `half` (yolo-bench --half): our ONNX is the f16 export (f16 input and output), PyTorch runs
    # its fused model .half() on a half input; Ultralytics' own f16 export needs a CUDA device
    # at export time, so it is left out.
    half = bool(req.get("half"))
    tag = ", f16" if half else ""
    x = np.random.default_rng(0).random((batch, 3, size, size), dtype=np.float32)
    x_in = x.astype(np.float16) if half else x
    runs, skipped, outs = {}, {}, {}
    if torch is not None:
        torch.set_num_threads(threads)
    if ort is None:
        skipped["onnxruntime"] = "onnxruntime is not importable"
    else:
        name = None
        try:
            sess, prefix = ort_session(req["ours_onnx"], threads, cuda)
            name = f"{prefix}, yolo-export ONNX{tag}"
            runs[name] = lambda s=sess: s.run(None, {"images": x_in})
            outs[name] = runs[name]()[0].astype(np.float32)
        except Exception as e:  # f16: e.g. an onnxruntime build without an f16 kernel it needs
            if not half:
                raise
            runs.pop(name, None)
            skipped["onnxruntime, yolo-export ONNX" + tag] = f"{type(e).__name__}: {e}"[:300]
    if ultralytics is None or load_safetensors is None:
        skipped["pytorch"] = "torch, ultralytics and safetensors are needed"
    else:
        yolo = torch_model(scale, req["weights"])
        if half:
            skipped["onnxruntime, Ultralytics ONNX"] = "Ultralytics exports f16 ONNX on a CUDA device only"
        elif ort is not None:
            cwd = os.getcwd()
            os.chdir(work)  # Ultralytics writes the export beside the current folder
            try:
                try:
                    import onnxslim  # noqa: F401

                    slim = True
                except ImportError:
                    slim = False
                p = yolo.export(format="onnx", imgsz=size, opset=17, simplify=slim, batch=batch)
            finally:
                os.chdir(cwd)
            dst = os.path.join(work, f"ultralytics_{key}.onnx")
            os.replace(p, dst)
            sess, prefix = ort_session(dst, threads, cuda)
            name = f"{prefix}, Ultralytics ONNX"
            runs[name] = lambda s=sess: s.run(None, {"images": x})
            outs[name] = runs[name]()[0]
        dev = "cuda" if cuda else "cpu"
        if half and not cuda:
            # Ultralytics runs f32 on the CPU; PyTorch's CPU f16 is no reference for speed.
            skipped["pytorch, f16"] = "PyTorch's f16 model runs on CUDA only (Ultralytics runs f32 on the CPU)"
        else:
            fused = yolo.model.fuse().eval().to(dev)
            xt = torch.from_numpy(x).to(dev)
            if half:
                fused, xt = fused.half(), xt.half()
            name = "PyTorch" + (" CUDA" if cuda else "") + " (fused" + tag + ")"

            def fwd(m=fused, t=xt):
                with torch.inference_mode():
                    return m(t)

            def run(f=fwd):
                y = f()
                y = y[0] if isinstance(y, (list, tuple)) else y
                return y

            runs[name] = run
            outs[name] = run().float().cpu().numpy()
    # Same weights, same input: the outputs must agree, or the timings compare different work.
    agree = {}
    names = list(outs)
    for n in names[1:]:
        a, b = outs[names[0]], outs[n]
        if a.shape != b.shape:
            raise ValueError(f"{n}: output shape {b.shape} != {names[0]}'s {a.shape}")
        agree[n] = float((np.abs(a - b) / np.maximum(np.abs(a), 1.0)).max())
    for n, f in runs.items():
        PREPARED[(key, n)] = (f, cuda and n.startswith("PyTorch"))
    return {"runtimes": list(runs), "skipped": skipped, "max_rel_diff_vs_first": agree}


def op_time(req):
    f, on_gpu = PREPARED[(req["key"], req["runtime"])]
    sync = torch.cuda.synchronize if on_gpu else None
    return {"times_ms": times_ms(f, req["warmup"], req["iters"], sync, req.get("budget_s"))}


def op_nms(req):
    # `yolo val` and `predict` import torchvision first, which makes this function use its
    # C++ nms (without it, a Python loop that takes seconds on val's candidates).
    try:
        import torchvision  # noqa: F401

        impl = "torchvision.ops.nms"
    except ImportError:
        impl = "TorchNMS (no torchvision)"
    from ultralytics.utils.nms import non_max_suppression

    nc, a = req["nc"], req["anchors"]
    pred = np.fromfile(req["path"], dtype="<f4").reshape(1, 4 + nc, a)
    t = torch.from_numpy(pred)
    kept = []

    def run():
        kept[:] = non_max_suppression(t, conf_thres=req["conf"], iou_thres=req["iou"],
                                      multi_label=req["multi_label"], max_det=300)

    torch.set_num_threads(req["threads"])
    ms = times_ms(run, req["warmup"], req["iters"], budget_s=req.get("budget_s"))
    return {"times_ms": ms, "kept": int(kept[0].shape[0]), "impl": impl}


def op_letterbox(req):
    import cv2
    from ultralytics.data.augment import LetterBox

    img = cv2.imread(req["path"])
    if img is None:
        raise ValueError(f"{req['path']}: cv2 cannot read it")
    lb = LetterBox(new_shape=(req["imgsz"], req["imgsz"]), auto=False, stride=32)
    cv2.setNumThreads(req["threads"])
    return {"times_ms": times_ms(lambda: lb(image=img), req["warmup"], req["iters"], budget_s=req.get("budget_s"))}


def bn_groups(model):
    """Ultralytics' `build_optimizer` split: biases, norm-layer weights, the other weights."""
    bn = tuple(v for k, v in torch.nn.__dict__.items() if "Norm" in k)
    g = [[], [], []]
    for mname, module in model.named_modules():
        for pname, p in module.named_parameters(recurse=False):
            full = f"{mname}.{pname}" if mname else pname
            if "bias" in full:
                g[2].append(p)
            elif isinstance(module, bn):
                g[1].append(p)
            else:
                g[0].append(p)
    return g


def pytorch_train_step(scale, batch, size, device="cpu", amp=False):
    """One Ultralytics train step on `device` as a closure, the model and batch built once: a
    seeded fresh yolov8<scale> (80 classes) in train mode, the batch of yolo_benches::TrainStep
    (the same pixel pattern, three boxes per image), forward + v8 loss, backward, clipping at
    norm 10, Nesterov SGD over `build_optimizer`'s three groups. With `amp`, Ultralytics' AMP
    step: forward and loss under `torch.autocast(float16)`, `GradScaler` scale / unscale_ /
    step / update around the clipping (`BaseTrainer._do_train` and `optimizer_step`)."""
    from ultralytics.cfg import get_cfg
    from ultralytics.nn.tasks import DetectionModel

    torch.manual_seed(0)
    model = DetectionModel(f"yolov8{scale}.yaml", nc=80, verbose=False)
    model.args = get_cfg()
    model.to(device).train()
    g = bn_groups(model)
    sgd = dict(lr=0.01, momentum=0.937, nesterov=True)
    opt = torch.optim.SGD([{"params": g[0], **sgd, "weight_decay": 5e-4},
                           {"params": g[1], **sgd, "weight_decay": 0.0},
                           {"params": g[2], **sgd, "weight_decay": 0.0}])
    n = batch * 3 * size * size
    img = torch.from_numpy(((np.arange(n, dtype=np.int64) * 7919 % 1000) / 1000.0).astype(np.float32))
    rows = [(b, (b * 3 + k) % 80, 0.2 + 0.3 * k, 0.3 + 0.05 * b, 0.1 + 0.1 * k, 0.15)
            for b in range(batch) for k in range(3)]
    t = torch.tensor(rows, dtype=torch.float32)
    data = {"img": img.view(batch, 3, size, size), "batch_idx": t[:, 0].contiguous(),
            "cls": t[:, 1:2].contiguous(), "bboxes": t[:, 2:6].contiguous()}
    data = {k: v.to(device) for k, v in data.items()}

    def step():
        loss, _ = model.loss(data)
        loss.sum().backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=10.0)
        opt.step()
        opt.zero_grad()

    if not amp:
        return step
    dev_type = torch.device(device).type
    scaler = torch.amp.GradScaler(dev_type)

    def amp_step():
        with torch.autocast(dev_type, dtype=torch.float16):
            loss, _ = model.loss(data)
        scaler.scale(loss.sum()).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=10.0)
        scaler.step(opt)
        scaler.update()
        opt.zero_grad()

    return amp_step


def op_prepare_train_step(req):
    dev = "cuda" if cuda_wanted(req) else "cpu"
    torch.set_num_threads(req["threads"])
    step = pytorch_train_step(req["scale"], req["batch"], req["imgsz"], dev)
    name = "PyTorch" + (" CUDA" if dev == "cuda" else "") + " train step"
    PREPARED[(req["key"], name)] = (step, dev == "cuda")
    return {"runtimes": [name]}


def op_train(req):
    import yaml
    from ultralytics import YOLO
    from ultralytics.nn.tasks import yaml_model_load

    # yolov8<scale>.yaml with that scale only, for the data's class count (as train_compare.py).
    with open(req["data"]) as f:
        nc = len(yaml.safe_load(f)["names"])
    cfg = dict(yaml_model_load(f"yolov8{req['scale']}.yaml"))
    cfg["nc"] = nc
    model_yaml = os.path.join(req["work"], f"ultralytics_yolov8{req['scale']}.yaml")
    with open(model_yaml, "w") as f:
        yaml.safe_dump(cfg, f)
    model = YOLO(model_yaml)
    times, start = [], {}
    model.add_callback("on_train_epoch_start", lambda tr: start.__setitem__("t", time.perf_counter()))
    model.add_callback("on_train_epoch_end", lambda tr: times.append(time.perf_counter() - start["t"]))
    torch.set_num_threads(req["threads"])
    model.train(data=req["data"], epochs=req["epochs"], imgsz=req["imgsz"], batch=req["batch"], nbs=req["nbs"],
                device=0 if cuda_wanted(req) else "cpu", workers=0, project=req["work"],
                name="ultralytics-train", exist_ok=True, amp=False, plots=False, val=False, seed=0,
                deterministic=True, verbose=False)
    return {"images_per_s": [req["train_images"] / s for s in times]}


OPS = {"prepare": op_prepare, "time": op_time, "nms": op_nms, "letterbox": op_letterbox,
       "prepare_train_step": op_prepare_train_step, "train": op_train}


def main():
    cuda = torch is not None and torch.cuda.is_available()
    hello = {"ok": True, "op": "hello", "versions": VERSIONS, "cuda": cuda,
             "ort_providers": ort.get_available_providers() if ort is not None else []}
    PROTO.write(json.dumps(hello) + "\n")
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        try:
            req = json.loads(line)
            if req.get("op") == "quit":
                break
            fn = OPS.get(req.get("op"))
            if fn is None:
                raise ValueError(f"unknown op {req.get('op')!r}")
            ans = {"ok": True, **fn(req)}
        except Exception as e:  # noqa: BLE001 - every failure is reported back, the worker goes on
            traceback.print_exc()
            ans = {"ok": False, "error": f"{type(e).__name__}: {e}"}
        PROTO.write(json.dumps(ans) + "\n")


if __name__ == "__main__":
    main()
