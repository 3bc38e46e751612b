"""CPU forward-pass back-ends: the same heads as the eager reference (ONNX Runtime to float rounding, bf16
within its precision); the ONNX export is cached and reused; an unknown back-end is a one-line config error."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.models.learned import SHIPPED_MODEL, LearnedModel


def test_backends_match_eager(tmp_path, monkeypatch):
    monkeypatch.setenv("SEAMLINE_CACHE", str(tmp_path / "cache"))
    x = np.random.default_rng(0).random((1, 3, 96, 128)).astype(np.float32)
    ref = LearnedModel(SHIPPED_MODEL, device="cpu", threads=1).predict_heads(x)
    onnx = LearnedModel(SHIPPED_MODEL, device="cpu", threads=1, inference="onnx")
    assert np.abs(onnx.predict_heads(x) - ref).max() < 1e-4
    exported = list((tmp_path / "cache" / "onnx").glob("*.onnx"))
    assert len(exported) == 1
    mtime = exported[0].stat().st_mtime_ns
    LearnedModel(SHIPPED_MODEL, device="cpu", threads=1, inference="onnx")  # reuses the export
    assert exported[0].stat().st_mtime_ns == mtime
    bf16 = LearnedModel(SHIPPED_MODEL, device="cpu", threads=1, inference="bf16").predict_heads(x)
    assert np.abs(bf16 - ref).max() < 0.1 and np.abs(bf16 - ref).mean() < 0.01


def test_unknown_backend_is_a_config_error():
    from pipeline.config import SegmentConfig

    with pytest.raises(Exception) as e:
        SegmentConfig(inference="tensorrt")
    assert "inference" in str(e.value)
