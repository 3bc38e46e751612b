"""infra/ checked as far as this machine can: the docker-compose file through Compose's own validator, the
Kubernetes manifests against their API schemas (kubernetes-validate) and the Dask operator's DaskCluster CRD
(``tests/data/dask-kubernetes/``),
and SLURM through dask-jobqueue: the job script a ``cluster: {kind: slurm}`` config generates, and that script
run for real by a stand-in ``sbatch`` (it starts the script with bash) so its workers join and segment a scene.

What none of this proves — a container built and started, a pod scheduled, a job queued by a real slurmctld —
is listed in infra/README.md.
"""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
import sys
from pathlib import Path

import geopandas as gpd
import pytest
import yaml
from servers import ROOT

pytestmark = pytest.mark.slow  # SLURM and Kubernetes schema checks and a job-script cluster

INFRA = ROOT / "infra"
K8S_VERSION = "1.33.0"
COMPOSE_HINT = "run .ci/install-clients.sh (apt-get install --no-install-recommends docker-compose)"


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


# ---------------------------------------------------------------------------------------------- docker compose
def _compose_config(path: Path) -> subprocess.CompletedProcess:
    exe = shutil.which("docker-compose")
    assert exe, f"docker-compose not found: {COMPOSE_HINT}"
    return subprocess.run([exe, "-f", str(path), "config", "-q"], capture_output=True, text=True, timeout=60)


def test_compose_file_is_valid_and_shares_no_disk(tmp_path):
    path = INFRA / "docker-compose.yml"
    r = _compose_config(path)
    assert r.returncode == 0, r.stderr
    # The validator does reject a broken file (so the check above means something).
    bad = yaml.safe_load(path.read_text())
    bad["services"]["dask-worker"]["deploy"]["replicas"] = "two"
    (tmp_path / "bad.yml").write_text(yaml.safe_dump(bad))
    assert _compose_config(tmp_path / "bad.yml").returncode != 0

    services = yaml.safe_load(path.read_text())["services"]
    assert {"s3", "prefect-server", "dask-scheduler", "dask-worker", "watch"} <= set(services)
    assert services["dask-worker"]["deploy"]["replicas"] >= 2
    # Workers and the watcher reach S3 and the one Prefect server by the standard variables, and mount nothing:
    # the only volumes are the S3 endpoint's and Prefect's own data.
    for name in ("dask-worker", "watch"):
        env = services[name]["environment"]
        assert env["AWS_ENDPOINT_URL"] == "http://s3:9000"
        assert env["PREFECT_API_URL"] == "http://prefect-server:4200/api"
        assert "volumes" not in services[name]
    watch = services["watch"]["command"]
    assert watch[:2] == ["watch", "s3://scenes/incoming"] and "--cron" in watch
    assert watch[watch.index("--scheduler") + 1] == "tcp://dask-scheduler:8786"
    assert "--out" in watch and watch[watch.index("--out") + 1].startswith("s3://")
    # The watch command line is one seamline accepts (its cron expression included).
    from pipeline.cli import build_parser
    from pipeline.cli.watch import validate_cron

    args = build_parser().parse_args(watch)
    assert args.func.__name__ == "_cmd_watch"
    validate_cron(args.cron)


# ------------------------------------------------------------------------------------------------- Kubernetes
def _daskcluster_schema() -> dict:
    # The operator's own CRD (dask-kubernetes 2026.3.0, BSD-3-Clause), kept as a test file: installing
    # dask-kubernetes would make every `dask worker` write ~/.config/dask/kubernetes.yaml (its CLI plugin).
    crd = yaml.safe_load((ROOT / "tests" / "data" / "dask-kubernetes" / "daskcluster-crd.yaml").read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    return version["schema"]["openAPIV3Schema"]


def _validate_daskcluster(doc: dict) -> None:
    import jsonschema

    jsonschema.validate(doc, _daskcluster_schema())


def test_kubernetes_manifests_match_their_schemas():
    import kubernetes_validate

    docs = {d["kind"]: d for p in sorted((INFRA / "k8s").glob("*.yaml")) for d in _docs(p)}
    assert {"DaskCluster", "CronJob", "ConfigMap"} <= set(docs)
    for kind, doc in docs.items():
        if kind == "DaskCluster":
            _validate_daskcluster(doc)
        else:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)

    # Both validators reject a wrong manifest.
    broken = copy.deepcopy(docs["DaskCluster"])
    broken["spec"]["worker"]["replicas"] = "four"
    with pytest.raises(Exception, match="four"):
        _validate_daskcluster(broken)
    broken = copy.deepcopy(docs["CronJob"])
    broken["spec"]["concurrencyPolicy"] = ["Forbid"]
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)

    # What ties them together: the CronJob runs `seamline watch --once`, one at a time, with the config from the
    # ConfigMap, whose scheduler is the operator's Service for this DaskCluster (<name>-scheduler:8786).
    cron = docs["CronJob"]["spec"]
    assert cron["concurrencyPolicy"] == "Forbid"
    pod = cron["jobTemplate"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    cmd = container["command"]
    assert cmd[:2] == ["seamline", "watch"] and "--once" in cmd
    config_path = Path(cmd[cmd.index("--config") + 1])
    (mount,) = container["volumeMounts"]
    assert str(config_path.parent) == mount["mountPath"]
    cfg_text = docs["ConfigMap"]["data"][config_path.name]
    from pipeline.config import SegmentConfig

    cfg = SegmentConfig.model_validate(yaml.safe_load(cfg_text))  # a config seamline accepts
    port = next(p["port"] for p in docs["DaskCluster"]["spec"]["scheduler"]["service"]["ports"] if p["name"] == "tcp-comm")
    assert cfg.scheduler == f"tcp://{docs['DaskCluster']['metadata']['name']}-scheduler:{port}"
    images = {container["image"]} | {c["image"] for part in ("worker", "scheduler")
                                     for c in docs["DaskCluster"]["spec"][part]["spec"]["containers"]}
    assert len(images) == 1  # one image for driver, scheduler and workers


# ------------------------------------------------------------------------------------------------------ SLURM
def test_slurm_job_script_from_the_config(tmp_path):
    secret = "do-not-leak-7f3a"
    env = {**os.environ, "AWS_SECRET_ACCESS_KEY": secret, "HF_HUB_OFFLINE": "1"}
    r = subprocess.run([sys.executable, "-m", "pipeline.cli", "cluster-script", "--config", str(ROOT / "configs/slurm.yaml")],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    script = r.stdout
    lines = script.splitlines()
    assert lines[0] == "#!/usr/bin/env bash"
    for directive in ("#SBATCH -J seamline-worker", "#SBATCH --cpus-per-task=8", "#SBATCH -t 04:00:00"):
        assert directive in lines, (directive, script)
    assert any(x.startswith("#SBATCH --mem=") for x in lines)
    assert "export OMP_NUM_THREADS=8 MKL_NUM_THREADS=8 OPENBLAS_NUM_THREADS=8 HF_HUB_OFFLINE=1" in lines
    assert "$HOME/seamline" not in script  # no hard-coded install: the workers run the driver's Python
    (worker,) = [x for x in lines if "distributed.cli.dask_worker" in x]
    assert "--local-directory $TMPDIR" in worker
    # The example runs the classical model, which uses no GPU: its jobs ask for none (issue #25).
    from pipeline.config import SegmentConfig
    from pipeline.config_file import load_yaml_config

    assert load_yaml_config(ROOT / "configs/slurm.yaml", SegmentConfig, {}).model == "classical"
    assert not any("gres" in x or "gpu" in x.lower() for x in lines if x.startswith("#SBATCH")), script
    assert "GPU=" not in worker
    assert worker.split()[-2:] == ["--nthreads", "1"]  # one task thread; the model uses the job's cores
    assert secret not in script  # credentials travel in sbatch's environment, never in the script
    # A config without a slurm section is one clear line.
    plain = tmp_path / "plain.yaml"
    plain.write_text("model: classical\n")
    r = subprocess.run([sys.executable, "-m", "pipeline.cli", "cluster-script", "--config", str(plain)],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "kind: slurm" in r.stderr, r.stderr


def test_slurm_conflicting_settings_are_one_clear_error(tmp_path):
    from pipeline.config import SegmentConfig
    from pipeline.config_file import load_yaml_config
    from pipeline.errors import ConfigError

    path = tmp_path / "both.yaml"
    path.write_text("scheduler: tcp://10.0.0.5:8786\ncluster: {kind: slurm, jobs: 2}\n")
    with pytest.raises(ConfigError, match="scheduler .* and cluster: {kind: slurm} both say where the workers come from"):
        load_yaml_config(path, SegmentConfig, {})
    path.write_text("cluster: {kind: pbs}\n")
    with pytest.raises(ConfigError, match="cluster"):
        load_yaml_config(path, SegmentConfig, {})


FAKE_SBATCH = """#!/bin/bash
# Stand-in for SLURM's sbatch: keeps a copy of the job script (as sbatch does: the caller deletes its file),
# runs it with bash in its own session, and prints sbatch's reply.
job="$SEAMLINE_FAKE_SLURM/job-$$"
cp "$1" "$job.sh"
setsid bash "$job.sh" > "$job.log" 2>&1 < /dev/null &
echo "$job.sh" >> "$SEAMLINE_FAKE_SLURM/submitted"
echo "Submitted batch job $!"
"""
FAKE_SCANCEL = """#!/bin/bash
for id in "$@"; do kill -TERM -- "-$id" 2>/dev/null || true; echo "$id" >> "$SEAMLINE_FAKE_SLURM/cancelled"; done
"""


def test_slurm_cluster_jobs_segment_a_scene_like_a_local_cluster(tmp_path, monkeypatch):
    """The generated job script, run as SLURM would run it, starts workers that join the driver's scheduler;
    the scene comes out as a LocalCluster makes it, and the jobs are cancelled at the end."""
    from pipeline.config import SegmentConfig
    from pipeline.runner import segment_scene
    from pipeline.stages.dispatch import dask_client
    from pipeline.synthetic import write_scene

    bindir, state = tmp_path / "bin", tmp_path / "slurm"
    bindir.mkdir(), state.mkdir()
    for name, body in (("sbatch", FAKE_SBATCH), ("scancel", FAKE_SCANCEL)):
        (bindir / name).write_text(body)
        (bindir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("SEAMLINE_FAKE_SLURM", str(state))

    tif = tmp_path / "scene.tif"
    write_scene(tif, 300, 260, seed=4)
    base = dict(model="classical", tile=128, halo=32, tiles_per_task=1, label_image=False, report=False,
                qupath_geojson=False)
    slurm = SegmentConfig(**base, cluster={"kind": "slurm", "jobs": 2, "cores": 1, "memory": "2GB", "walltime": "00:10:00",
                                           "local_directory": str(tmp_path / "scratch"), "start_timeout_s": 120})
    s = segment_scene(str(tif), tmp_path / "out_slurm", slurm)
    with dask_client(workers=1) as c:
        ref = segment_scene(str(tif), tmp_path / "out_local", SegmentConfig(**base), client=c)

    assert s["cluster"] == "slurm"
    assert len((state / "submitted").read_text().splitlines()) == 2  # two worker jobs went through sbatch
    assert len((state / "cancelled").read_text().splitlines()) >= 2  # and were cancelled when the run ended
    a = gpd.read_parquet(s["outputs"]["parquet"]).sort_values("area").reset_index(drop=True)
    b = gpd.read_parquet(ref["outputs"]["parquet"]).sort_values("area").reset_index(drop=True)
    assert s["objects"] == ref["objects"] > 20
    assert a["area"].tolist() == b["area"].tolist()
    assert a.geometry.union_all().symmetric_difference(b.geometry.union_all()).area == 0


def test_slurm_driver_batch_script_parses_and_uses_the_slurm_config():
    script = INFRA / "slurm" / "seamline-dask.sbatch"
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    text = script.read_text()
    (line,) = [x for x in text.splitlines() if x.startswith("seamline segment")]
    config = line.split("--config", 1)[1].split()[0]
    from pipeline.config import SegmentConfig
    from pipeline.config_file import load_yaml_config

    assert load_yaml_config(ROOT / config, SegmentConfig, {}).cluster.kind == "slurm"
    # The user's arguments come last, so their flags (and a --config of their own) win over configs/slurm.yaml;
    # the environment is the one named by SEAMLINE_VENV or the one active at sbatch time, never a fixed path.
    assert line.rstrip().endswith('"$@"') and line.index("--config") < line.index('"$@"')
    assert "$HOME/seamline" not in text and "SEAMLINE_VENV" in text


def test_kubernetes_workers_request_no_gpu_for_the_classical_model():
    """The CronJob's config runs the classical model; GPUs requested for it would sit idle (issue #25)."""
    from pipeline.config import SegmentConfig

    docs = {d["kind"]: d for p in sorted((INFRA / "k8s").glob("*.yaml")) for d in _docs(p)}
    (cfg_text,) = docs["ConfigMap"]["data"].values()
    assert SegmentConfig.model_validate(yaml.safe_load(cfg_text)).model == "classical"
    for c in docs["DaskCluster"]["spec"]["worker"]["spec"]["containers"]:
        assert "nvidia.com/gpu" not in str(c.get("resources")) and "GPU=1" not in c["command"]
