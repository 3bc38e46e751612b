"""``seamline segment a.tif b.tif --out DIR``: one row per input in DIR/summary.parquet and DIR/summary.csv;
a slide that fails is a ``failed`` row, the others finish, and the command still fails with one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from pipeline.synthetic import write_scene

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # a batch of CLI runs
def test_batch_summary_table(tmp_path):
    a, b = tmp_path / "a.tif", tmp_path / "b.tif"
    write_scene(a, 200, 230, crs=None, seed=1, pixel_size_um=0.5)
    write_scene(b, 180, 260, crs=None, seed=2, pixel_size_um=0.5)
    bad = tmp_path / "c.tif"
    write_scene(bad, 600, 600, crs=None, seed=3, pixel_size_um=0.5)
    import tifffile

    with tifffile.TiffFile(bad) as tf:  # 256-px tiles: corrupt the middle one, which input validation does not read
        off, n = tf.pages[0].dataoffsets[4], tf.pages[0].databytecounts[4]
    with open(bad, "r+b") as fh:
        fh.seek(off)
        fh.write(b"\xff" * n)
    out = tmp_path / "results"
    cmd = [sys.executable, "-m", "pipeline.cli", "segment", str(a), str(bad), str(b), "--out", str(out),
           "--model", "classical", "--workers", "1", "--tile", "128", "--halo", "32"]
    res = subprocess.run(cmd, cwd=REPO, env=dict(os.environ, HF_HUB_OFFLINE="1", DO_NOT_TRACK="1"),
                         capture_output=True, text=True, timeout=300, check=False)
    assert res.returncode == 2, res.stderr
    assert res.stderr.strip().splitlines()[-1].startswith("seamline: error: ") and "c.tif" in res.stderr
    t = pq.read_table(out / "summary.parquet").to_pylist()
    assert [r["stem"] for r in t] == ["a", "c", "b"]
    assert [r["status"] for r in t] == ["ok", "failed", "ok"]
    assert "truncated or corrupt" in t[1]["error"] and t[1]["objects"] is None
    for r in (t[0], t[2]):
        s = json.loads((out / f"{r['stem']}.json").read_text())
        assert r["objects"] == s["objects"] > 10
        assert r["tissue_area_unit"] == "mm2" and abs(r["tissue_area"] - r["width"] * r["height"] * 0.25e-6) < 1e-12
        assert abs(r["objects_density"] - s["objects"] / r["tissue_area"]) < 1e-6
        assert r["seconds_total"] > 0 and r["seconds_tiles"] > 0
    csv = pacsv.read_csv(out / "summary.csv").to_pylist()
    assert [r["status"] for r in csv] == ["ok", "failed", "ok"] and csv[2]["objects"] == t[2]["objects"]
