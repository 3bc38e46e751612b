"""How the learned model's forward pass runs on a CPU: one callable per back-end, same weights.

* ``eager``: PyTorch, channels-last float32 (the reference).
* ``bf16``: PyTorch with bfloat16 autocast (needs AVX512-BF16/AMX to pay off; slightly different numbers).
* ``compile``: ``torch.compile`` (Inductor) of the channels-last float32 network; compiles on first use.
* ``onnx``: ONNX Runtime, float32. The network is exported once per checkpoint and torch version into a cache
  folder (``SEAMLINE_CACHE`` or ``~/.cache/seamline``), written under a temporary name then renamed, so
  worker processes exporting at once never read half a file. The shipped weights are never changed.

Which is fastest on this CPU, and whether each keeps the model's validation AP, is measured by
``bench/cpu_inference.py`` (docs/BENCHMARKS.md). CUDA always uses PyTorch (float16 autocast).
"""

from __future__ import annotations

import hashlib
import os
from importlib.metadata import version
from pathlib import Path
from typing import Callable

import numpy as np

from pipeline.errors import ParameterError

__all__ = ["BACKENDS", "make_forward", "onnx_path", "cached_onnx", "onnx_session"]

BACKENDS = ("eager", "bf16", "compile", "onnx")


def _cache_dir() -> Path:
    return Path(os.environ.get("SEAMLINE_CACHE") or Path.home() / ".cache" / "seamline")


def cached_onnx(weights_file: str | os.PathLike[str]) -> Path:
    """Where the ONNX export of a checkpoint lives (whether or not it exists yet): keyed by the weights'
    content and the torch version that exported it — found without importing torch."""
    h = hashlib.sha256()
    with open(weights_file, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    h.update(version("torch").encode())
    return _cache_dir() / "onnx" / f"{Path(weights_file).stem}-{h.hexdigest()[:16]}.onnx"


def onnx_path(net, weights_file: str | os.PathLike[str]) -> Path:
    """The ONNX export of ``net`` (exported on first use), keyed by the weights' content and torch version."""
    import torch

    dest = cached_onnx(weights_file)
    if dest.exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    x = torch.zeros(1, next(net.parameters()).shape[1], 64, 64)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net.to(memory_format=torch.contiguous_format), x, str(tmp), dynamo=False, opset_version=17,
                          input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "n", 2: "h", 3: "w"}, "y": {0: "n", 2: "h", 3: "w"}})
    net.to(memory_format=torch.channels_last)
    os.replace(tmp, dest)
    return dest


def onnx_session(onnx_file: str | os.PathLike[str], threads: int | None, arena: bool = True):
    """``forward(x)``: (N, C, H, W) float32 numpy → logits numpy, through ONNX Runtime on the CPU.

    ORT's memory arena keeps the largest activations the session ever needed for the life of the process:
    about 1 GB for a 1536-px window at batch 1, several GB at batch 4 (bench/ort_memory.py; docs/BENCHMARKS.md,
    "Memory"), which is why a CPU run calls the network one window at a time. Without the arena the forward
    pass was 2x slower here (every call faults its activations in again), so it stays on."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise ParameterError("inference 'onnx': onnxruntime is not installed; pip install onnxruntime onnx "
                             "(the 'onnx' extra), or set inference: eager") from None
    so = ort.SessionOptions()
    so.intra_op_num_threads = int(threads or os.cpu_count() or 1)
    so.inter_op_num_threads = 1
    so.enable_cpu_mem_arena = arena
    so.enable_mem_pattern = arena
    sess = ort.InferenceSession(str(onnx_file), so, providers=["CPUExecutionProvider"])

    def forward(x: np.ndarray) -> np.ndarray:
        return sess.run(None, {"x": np.ascontiguousarray(x, dtype=np.float32)})[0]
    return forward


def make_forward(net, backend: str, threads: int | None, weights_file: str | os.PathLike[str]) -> Callable:
    """``forward(x)``: (N, C, H, W) float32 tensor (channels-last) → float32 logits tensor."""
    import torch

    if backend == "eager":
        return net
    if backend == "bf16":
        def forward(x):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return net(x).float()
        return forward
    if backend == "compile":
        return torch.compile(net)
    if backend == "onnx":  # torch in, torch out (bench/cpu_inference.py compares back-ends this way)
        run = onnx_session(onnx_path(net, weights_file), threads or torch.get_num_threads())

        def forward(x):
            return torch.from_numpy(run(x.contiguous().numpy()))
        return forward

    raise ParameterError(f"inference {backend!r}: unknown back-end; use one of {', '.join(BACKENDS)}")
