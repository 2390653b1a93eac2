"""Runs ONNX files written by the yolo-export tests with the `onnx` checker and onnxruntime.

    python ort_run.py job.json

job.json: {"result": path, "runs": [{"model": path, "inputs": [{"path", "shape", "dtype"}],
"outputs": [path, ...]}]}. For every run: `onnx.checker.check_model(full_check=True)`, then an
onnxruntime CPU session (2 threads) on each input (raw little-endian, C order); each output is
written as raw float32. The result file holds, per run, the output shapes and dtypes, the
graph's input/output names and the metadata as Ultralytics' AutoBackend parses it.
"""
import ast
import json
import sys

import numpy as np
import onnx
import onnxruntime as ort


def parse_meta(meta):
    out = {}
    for k, v in meta.items():
        if k in {"stride", "batch", "channels"}:
            out[k] = int(v)
        elif k in {"imgsz", "names", "args", "end2end"}:
            v = ast.literal_eval(v)
            out[k] = {str(a): b for a, b in v.items()} if k == "names" else v
        else:
            out[k] = v
    return out


def main():
    job = json.load(open(sys.argv[1]))
    results = []
    for run in job["runs"]:
        model = onnx.load(run["model"])
        onnx.checker.check_model(model, full_check=True)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 2
        opts.inter_op_num_threads = 1
        sess = ort.InferenceSession(run["model"], opts, providers=["CPUExecutionProvider"])
        res = {
            "opset": model.opset_import[0].version,
            "ir_version": model.ir_version,
            "inputs": [i.name for i in sess.get_inputs()],
            "input_types": [i.type for i in sess.get_inputs()],
            "input_shapes": [[d if isinstance(d, int) else str(d) for d in i.shape] for i in sess.get_inputs()],
            "outputs": [o.name for o in sess.get_outputs()],
            "output_shapes_declared": [[d if isinstance(d, int) else str(d) for d in o.shape] for o in sess.get_outputs()],
            "metadata": parse_meta(sess.get_modelmeta().custom_metadata_map),
            "ops": sorted({n.op_type for n in model.graph.node}),
            "runs": [],
        }
        for inp, out_path in zip(run["inputs"], run["outputs"]):
            x = np.fromfile(inp["path"], dtype=inp["dtype"]).reshape(inp["shape"])
            y = sess.run(None, {"images": x})[0]
            res["runs"].append({"shape": list(y.shape), "dtype": str(y.dtype)})
            np.ascontiguousarray(y.astype(np.float32)).tofile(out_path)
        results.append(res)
    json.dump(results, open(job["result"], "w"))


if __name__ == "__main__":
    main()
