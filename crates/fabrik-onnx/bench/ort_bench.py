"""onnxruntime baseline for the fabrik-onnx benchmark (see BENCH.md).

Same model, same input and same measurement scheme as `benches/throughput.rs`:
- single row: each of the 20 reference rows in turn, shape [1, 8]; p50/p99 latency of one run;
- batched: the 20 reference rows tiled to 1000 rows, shape [1000, 8]; rows/s.
One thread: intra_op_num_threads = inter_op_num_threads = 1, sequential execution.

usage: python bench/ort_bench.py [model.onnx ...]   (default: tests/fixtures/iforest_100.onnx)
"""
import json
import os
import sys
import time

import numpy as np
import onnxruntime as ort

HERE = os.path.dirname(os.path.abspath(__file__))
FIX = os.path.join(HERE, "..", "tests", "fixtures")
SINGLE_ITERS = 2000
BATCH_ROWS = 1000
BATCH_ITERS = 50


def bench(path):
    ref = json.load(open(os.path.join(FIX, "reference_io.json")))
    x = np.asarray(ref["input"]["data"], dtype=np.float32)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name

    rows = [x[i : i + 1].copy() for i in range(x.shape[0])]
    for r in rows * 10:  # warm-up
        sess.run(None, {name: r})
    lat = []
    for i in range(SINGLE_ITERS):
        r = rows[i % len(rows)]
        t0 = time.perf_counter_ns()
        sess.run(None, {name: r})
        lat.append(time.perf_counter_ns() - t0)
    lat = np.sort(np.asarray(lat, dtype=np.float64)) / 1000.0
    p50 = lat[len(lat) // 2]
    p90 = lat[int(len(lat) * 0.90)]
    p99 = lat[int(len(lat) * 0.99)]

    batch = np.tile(x, (BATCH_ROWS // x.shape[0], 1))
    for _ in range(3):
        sess.run(None, {name: batch})
    t0 = time.perf_counter()
    for _ in range(BATCH_ITERS):
        sess.run(None, {name: batch})
    dt = time.perf_counter() - t0
    rps = BATCH_ROWS * BATCH_ITERS / dt
    print(
        f"ort {os.path.basename(path)}: single-row p50 {p50:.1f} us, p90 {p90:.1f} us, p99 {p99:.1f} us, "
        f"{1e6 / np.mean(lat):.0f} rows/s; batch {BATCH_ROWS}: {dt / BATCH_ITERS * 1e3:.2f} ms/batch, {rps:.0f} rows/s"
    )


if __name__ == "__main__":
    paths = sys.argv[1:] or [os.path.join(FIX, "iforest_100.onnx")]
    print(f"onnxruntime {ort.__version__}, numpy {np.__version__}")
    for p in paths:
        bench(p)
