"""int8 for the shipped model: ONNX Runtime static quantization (QDQ, per-channel weights, activations
calibrated on DSB2018 *training* images, never the validation ones), against float32 ONNX Runtime: bare forward
Mpx/s side by side, and AP@0.5 on the validation split as bench/cpu_inference.py computes it.

    python bench/onnx_int8.py [--data ../shared/data/dsb2018] [--calib 24] [--json docs/bench/onnx_int8.json]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from pipeline.bench import machine_info
from pipeline.evaluation.metrics import counts_at
from pipeline.models.backends import onnx_path
from pipeline.models.checkpoint import checkpoint_paths, load_metadata
from pipeline.models.learned import SHIPPED_MODEL, LearnedModel


def main() -> dict:
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    from pipeline.training.data import load_folder_dataset

    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="../shared/data/dsb2018")
    ap.add_argument("--calib", type=int, default=24)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--json")
    a = ap.parse_args()
    threads = os.cpu_count() or 1
    tmp = Path(tempfile.mkdtemp(prefix="seamline-int8-"))
    os.environ.setdefault("SEAMLINE_CACHE", str(tmp / "cache"))
    ref = LearnedModel(SHIPPED_MODEL, device="cpu", threads=threads)
    fp32 = onnx_path(ref.net, checkpoint_paths(SHIPPED_MODEL)[0])
    md = load_metadata(SHIPPED_MODEL)
    val = set(md["training"]["val_names"])
    data = load_folder_dataset(a.data)
    train = [s for s in data if s.name not in val]
    rng = np.random.default_rng(0)
    calib = [train[i] for i in rng.choice(len(train), size=min(a.calib, len(train)), replace=False)]

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter([{"x": ref.prepare(s.image)[None, :, :256, :256].astype(np.float32)} for s in calib])

        def get_next(self):
            return next(self.items, None)

    int8 = tmp / "int8.onnx"
    t0 = time.perf_counter()
    quantize_static(str(fp32), str(int8), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8)
    res: dict = {"machine": machine_info(), "threads": threads, "quantize_s": round(time.perf_counter() - t0, 1),
                 "calibration_images": len(calib), "bare_rounds_s": {"onnx_fp32": [], "onnx_int8": []}}
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    sessions = {"onnx_fp32": ort.InferenceSession(str(fp32), so, providers=["CPUExecutionProvider"]),
                "onnx_int8": ort.InferenceSession(str(int8), so, providers=["CPUExecutionProvider"])}
    x = np.random.default_rng(1).random((1, 3, a.size, a.size)).astype(np.float32)
    for s in sessions.values():
        s.run(None, {"x": x})
    for _ in range(a.reps):
        for k, s in sessions.items():
            t0 = time.perf_counter()
            s.run(None, {"x": x})
            res["bare_rounds_s"][k].append(round(time.perf_counter() - t0, 3))
    res["bare_mpx_s"] = {k: round(a.size * a.size / 1e6 / float(np.median(v)), 3) for k, v in res["bare_rounds_s"].items()}
    print(json.dumps(res["bare_mpx_s"]), flush=True)
    samples = [s for s in data if s.name in val]
    res["ap50"] = {}
    for k, sess in sessions.items():
        c: dict[str, list[int]] = {}
        for s in samples:
            im = ref.prepare(s.image)[None].astype(np.float32)
            h, w = im.shape[2:]
            ph, pw = (-h) % 32, (-w) % 32
            im = np.pad(im, ((0, 0), (0, 0), (0, ph), (0, pw)), mode="reflect")
            y = 1 / (1 + np.exp(-sess.run(None, {"x": im})[0][0, :, :h, :w]))
            pred, _ = ref.instances(y)
            for key in ("all", s.modality):
                cc = c.setdefault(key, [0, 0, 0])
                for j, v in enumerate(counts_at(s.labels, pred)):
                    cc[j] += v
        res["ap50"][k] = {kk: round(v[0] / max(1, sum(v)), 4) for kk, v in sorted(c.items())}
        print(k, json.dumps(res["ap50"][k]), flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=2) + "\n")
    return res


if __name__ == "__main__":
    main()
