"""The learned model at inference time: load a checkpoint once, predict batches, make instances."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import numpy as np
from scipy.special import expit

from pipeline.errors import CheckpointError
from pipeline.models.backends import cached_onnx, make_forward, onnx_path, onnx_session
from pipeline.models.checkpoint import checkpoint_paths, load_metadata, load_state_dict
from pipeline.models.instances import heads_to_instances
from pipeline.models.network import build_network
from pipeline.models.normalize import to_model_channels
from pipeline.models.stain import input_kind, model_input

__all__ = ["LearnedModel", "PendingHeads", "pick_device", "SHIPPED_MODEL"]

#: The nuclei model shipped in the package (trained on DSB2018, CC0; see docs/MODEL.md).
SHIPPED_MODEL = Path(__file__).resolve().parent.parent / "weights" / "nuclei_unet_mbv2"


def _nvidia_driver() -> bool:
    """An NVIDIA driver is loaded (checked without importing torch, whose import costs a CPU-only worker
    ~380 MB and seconds)."""
    return os.path.exists("/proc/driver/nvidia/version") or os.path.exists("/dev/nvidiactl")


def pick_device(requested: str = "auto") -> str:
    if requested == "auto":
        if not _nvidia_driver():
            return "cpu"
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return requested


class PendingHeads:
    """The heads of a submitted batch: ``result()`` waits for the device (if any) and returns the array."""

    def __init__(self, value, event=None):
        self._value, self._event = value, event

    def result(self) -> np.ndarray:
        if self._event is not None:
            self._event.synchronize()
            self._value, self._event = self._value.numpy(), None
        return self._value


class LearnedModel:
    """A network plus its post-processing, as described by the checkpoint's metadata.

    ``predict_heads`` is the bare forward pass (what the benchmark compares end-to-end throughput with);
    ``instances`` turns the heads of one tile into labels.
    """

    kind = "learned"

    def __init__(self, path: str | os.PathLike[str], device: str = "auto", threads: int | None = None,
                 tta: bool = False, inference: str = "eager"):
        self.path = str(path)
        self.meta: dict[str, Any] = load_metadata(path)
        self.device = pick_device(device)
        self.in_channels = int(self.meta["in_channels"])
        #: What the network gets from the normalised window (pipeline/models/stain.py): the bands as they are,
        #: or, for an H&E model, the RGB transmission or the haematoxylin concentration.
        self.input = input_kind(self.meta)
        self.post = dict(self.meta.get("postprocess", {}))
        self.classes = list(self.meta.get("classes", ["object"]))
        self.halo_hint = int(self.meta.get("receptive_field_px", 64))
        self.use_amp = self.device.startswith("cuda")
        #: Test-time augmentation: average the heads over the image and its three mirror images (4x the
        #: forward passes; mirrored, so every pixel keeps the same context and tiling is unaffected).
        self.tta = tta
        self._forward_lock = threading.Lock()
        #: CPU back-end of the forward pass (:mod:`pipeline.models.backends`); CUDA always runs PyTorch.
        self.inference = "eager" if self.device.startswith("cuda") else inference
        #: Windows per forward pass when the config leaves batch_size unset: a GPU wants batches; a CPU gains
        #: nothing from them and its memory grows with the batch (bench/ort_memory.py).
        self.default_batch = 4 if self.device.startswith("cuda") else 1
        weights = checkpoint_paths(path)[0]
        self.net = None
        self._onnx = None
        if self.inference == "onnx" and cached_onnx(weights).exists():
            # ONNX Runtime on numpy: torch is never imported in this process (a CPU worker saves ~380 MB)
            self._onnx = onnx_session(cached_onnx(weights), threads)
            return
        import torch

        if threads:
            torch.set_num_threads(threads)
        net = build_network(self.meta)
        state = load_state_dict(path)
        missing, unexpected = net.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise CheckpointError(
                f"checkpoint {path}: weights do not fit the architecture in its metadata "
                f"(missing {len(missing)}, unexpected {len(unexpected)} tensors); re-train or fix the JSON"
            )
        # Channels-last (NHWC): the convolutions run 1.3x (1 thread) to 1.5x (2 threads) faster on a CPU
        # (bench/layout_cpu.py), and on CUDA it is the layout that fp16 tensor-core kernels want.
        self.net = net.to(self.device, memory_format=torch.channels_last).eval()
        if self.inference == "onnx":  # first use of this checkpoint here: export it, then run it on numpy
            self._onnx = onnx_session(onnx_path(self.net, weights), threads)
            return
        self.forward = make_forward(self.net, self.inference, threads, weights)

    @property
    def name(self) -> str:
        return Path(self.path).name

    def predict_heads(self, batch: np.ndarray) -> np.ndarray:
        """(N, C, H, W) normalised float32 → (N, 3, H, W) float32: fg prob, boundary prob, distance."""
        return self.submit_heads(batch).result()

    def submit_heads(self, batch: np.ndarray) -> "PendingHeads":
        """Start the forward pass and return at once where the device allows it (CUDA queues the work and
        copies the result into pinned host memory in the background): the caller post-processes the previous
        batch on the CPU meanwhile, so the GPU is not left idle (:func:`pipeline.stages.tile_task.process_tiles`).
        On a CPU the work is done here.

        One forward pass at a time per process (a lock): a worker with several task threads then runs the
        network on all its cores for one tile while its other threads post-process earlier tiles, instead of
        several forward passes fighting over the same cores.
        """
        with self._forward_lock:
            return self._submit(batch)

    def _submit_onnx(self, batch: np.ndarray) -> "PendingHeads":
        """The CPU ONNX path on numpy alone: pad to a multiple of 32 (reflect, as the torch path), sigmoid, TTA."""
        n, c, h, w = batch.shape
        ph, pw = (-h) % 32, (-w) % 32
        x = np.ascontiguousarray(batch, dtype=np.float32)
        if ph or pw:
            mode = "reflect" if min(h, w) > max(ph, pw) else "constant"
            x = np.pad(x, ((0, 0), (0, 0), (0, ph), (0, pw)), mode=mode)
        y = expit(self._onnx(x))
        if self.tta:
            for axes in ((3,), (2,), (2, 3)):
                y += np.flip(expit(self._onnx(np.ascontiguousarray(np.flip(x, axes)))), axes)
            y /= 4
        return PendingHeads(np.ascontiguousarray(y[:, :, :h, :w], dtype=np.float32))

    def _submit(self, batch: np.ndarray) -> "PendingHeads":
        if self._onnx is not None:
            return self._submit_onnx(batch)
        import torch

        n, c, h, w = batch.shape
        ph, pw = (-h) % 32, (-w) % 32
        x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
        if ph or pw:
            x = torch.nn.functional.pad(x, (0, pw, 0, ph), mode="reflect" if min(h, w) > max(ph, pw) else "constant")
        cuda = self.device.startswith("cuda")
        if cuda:
            x = x.pin_memory()
        x = x.to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), torch.autocast("cuda" if cuda else "cpu", dtype=torch.float16, enabled=self.use_amp):
            y = torch.sigmoid(self.forward(x).float())
            if self.tta:
                for dims in ((3,), (2,), (2, 3)):
                    y += torch.sigmoid(self.forward(torch.flip(x, dims)).float()).flip(dims)
                y /= 4
            y = y[:, :, :h, :w]
            if not cuda:
                return PendingHeads(y.contiguous().numpy())
            host = torch.empty(y.shape, dtype=torch.float32, pin_memory=True)
            host.copy_(y, non_blocking=True)
            done = torch.cuda.Event()
            done.record()
        return PendingHeads(host, done)

    def prepare(self, norm: np.ndarray) -> np.ndarray:
        """The network input of one normalised (bands, H, W) window: the checkpoint's ``input`` transform
        (:func:`pipeline.models.stain.model_input`; training makes its crops with the same function), then
        its channel count."""
        return to_model_channels(model_input(norm, self.input), self.in_channels)

    def instances(self, heads: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Labels and the per-pixel score map (foreground probability) of one tile."""
        keys = ("fg_threshold", "marker_threshold", "boundary_threshold", "min_marker_area", "min_area", "max_area")
        kw = {k: self.post[k] for k in keys if k in self.post}
        return heads_to_instances(heads[0], heads[1], heads[2], **kw), heads[0]
