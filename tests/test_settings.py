"""One owner of "the settings that change results" (pipeline/settings.py): every config field is classified,
the fingerprint is taken of the resolved config, and a scheduled ``watch`` with default settings does nothing
the second time — for the classical model and each shipped model, through the command users run."""

from __future__ import annotations

import subprocess
import sys

import pytest
from servers import ROOT

from pipeline.config import SegmentConfig, result_fields
from pipeline.settings import default_workers, resolve_settings
from pipeline.synthetic import write_scene
from pipeline.watch import read_ledger, watch_once

SHIPPED = ["default", "buildings", "trees"]


def test_every_config_field_says_whether_it_changes_results():
    unclassified = [n for n, f in SegmentConfig.model_fields.items()
                    if not isinstance((f.json_schema_extra or {}).get("results"), bool)]
    assert not unclassified, f"classify these SegmentConfig fields with _setting(results=...): {unclassified}"
    assert {"model", "tile", "halo", "classical", "tta", "inference", "tissue"} <= result_fields()
    assert not {"workers", "scheduler", "device", "batch_size", "tiles_per_task", "workdir", "memory_limit"} & result_fields()


@pytest.mark.parametrize("model", ["classical", *SHIPPED])
def test_the_fingerprint_is_of_the_resolved_config(model):
    """Leaving the halo unset is the same setting as giving the value it resolves to (the cause of #19)."""
    unset = resolve_settings(SegmentConfig(model=model))
    explicit = resolve_settings(SegmentConfig(model=model, halo=unset.cfg.halo))
    assert unset.cfg.halo is not None and unset.fingerprint == explicit.fingerprint
    # what only changes how the work runs leaves it alone; what changes results does not
    assert resolve_settings(SegmentConfig(model=model, workers=1, batch_size=1, tiles_per_task=9)).fingerprint == unset.fingerprint
    assert resolve_settings(SegmentConfig(model=model, halo=unset.cfg.halo - 8)).fingerprint != unset.fingerprint
    assert resolve_settings(SegmentConfig(model=model, tta=True)).fingerprint != unset.fingerprint


def test_default_workers_follow_cores_and_memory():
    assert default_workers("learned", cores=8, available_gib=64) == 8
    assert default_workers("learned", cores=8, available_gib=10) == 4  # 2.5 GiB each
    assert default_workers("classical", cores=4, available_gib=10) == 4
    assert default_workers("learned", cores=4, available_gib=1) == 1  # never none


def _watch(src, dest, *extra):
    cmd = [sys.executable, "-m", "pipeline.cli", "watch", str(src), "--out", str(dest), "--once", *extra]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)


@pytest.mark.slow  # two watch rounds through the CLI
def test_watch_twice_with_default_settings_does_nothing_the_second_time(tmp_path):
    """The user's route: `seamline watch SRC --out DEST --config cfg.yaml --once` twice, the config leaving tile
    and halo unset (model: classical, workers: 2). The second run processes nothing and no attempt is added."""
    src, dest = tmp_path / "incoming", tmp_path / "results"
    src.mkdir()
    write_scene(src / "a.tif", 260, 240, seed=1)
    write_scene(src / "b.tif", 200, 230, seed=2)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("model: classical\nworkers: 2\n")
    first = _watch(src, dest, "--config", str(cfg))
    assert first.returncode == 0 and "2 processed" in first.stdout, first.stderr[-2000:]
    second = _watch(src, dest, "--config", str(cfg))
    assert second.returncode == 0 and "0 processed" in second.stdout and "2 already done" in second.stdout, second.stdout
    assert "processing it again" not in second.stderr, second.stderr
    assert (read_ledger(str(dest)).attempts == 1).all()


@pytest.mark.slow
@pytest.mark.parametrize("model", SHIPPED)
def test_watch_twice_with_each_shipped_model_and_default_settings(model, dask_client_session, tmp_path):
    src, dest = tmp_path / "incoming", tmp_path / "results"
    src.mkdir()
    write_scene(src / "a.tif", 192, 160, seed=5)
    cfg = SegmentConfig(model=model)  # tile and halo unset: the model's defaults
    first = watch_once(str(src), str(dest), cfg, client=dask_client_session)
    assert (first["processed"], first["failed"]) == (1, 0), first["results"]
    second = watch_once(str(src), str(dest), cfg, client=dask_client_session,
                        process=lambda *a: pytest.fail(f"{model}: a done scene was processed again"))
    assert (second["processed"], second["skipped_done"]) == (0, 1)
