#!/usr/bin/env python3
"""Times onnxruntime on a YOLOv8 ONNX export, for comparison with
`edgeqi-agent bench detector`. Prints human text, then one JSON line:
{"engine","model","threads","runs","median_ms","p90_ms","peak_rss_mb"}.

Only session.run() is timed (letterbox and NMS are not), so the comparison
is, if anything, tilted in onnxruntime's favour: our numbers include them.
"""
import argparse
import json
import resource
import statistics
import time

import numpy as np
import onnxruntime as ort
from PIL import Image


def letterbox(path, size):
    img = Image.open(path).convert("RGB")
    w, h = img.size
    r = min(size / h, size / w)
    nw, nh = round(w * r), round(h * r)
    img = img.resize((nw, nh), Image.BILINEAR)
    canvas = Image.new("RGB", (size, size), (114, 114, 114))
    canvas.paste(img, (round((size - nw) / 2 - 0.1), round((size - nh) / 2 - 0.1)))
    x = np.asarray(canvas, dtype=np.float32) / 255.0
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--image", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    a = ap.parse_args()

    so = ort.SessionOptions()
    so.intra_op_num_threads = a.threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(a.model, so, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    size = inp.shape[2] if isinstance(inp.shape[2], int) else 640
    x = letterbox(a.image, size)
    for _ in range(a.warmup):
        sess.run(None, {inp.name: x})
    times = []
    for _ in range(max(1, a.runs)):
        t0 = time.perf_counter()
        sess.run(None, {inp.name: x})
        times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    median = statistics.median(times)
    p90 = times[min(len(times) - 1, round((len(times) - 1) * 0.9))]
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print(f"onnxruntime {ort.__version__} {a.model} threads={a.threads}: median {median:.1f} ms, p90 {p90:.1f} ms, peak RSS {rss:.1f} MB")
    print(json.dumps({"engine": "onnxruntime", "model": a.model, "threads": a.threads, "runs": len(times),
                      "median_ms": round(median, 3), "p90_ms": round(p90, 3), "peak_rss_mb": round(rss, 1)}))


if __name__ == "__main__":
    main()
