"""Stage 3 plumbing: a Dask client — a LocalCluster of worker processes by default, an existing cluster
(``scheduler:``), or workers submitted as SLURM jobs (``cluster: {kind: slurm, …}``, dask-jobqueue).

Worker processes (not threads): the GIL would serialise the Python around the model. The model is loaded once
per worker by :func:`pipeline.stages.tile_task.get_model`. Start GPU workers with ``--resources GPU=1`` (see infra/),
one worker per GPU: the learned model's tile tasks then go to them only (:func:`pipeline.runner.run_tiles`).
"""

from __future__ import annotations

import contextlib
import os
from typing import TYPE_CHECKING, Iterator

from pipeline.errors import ParameterError

if TYPE_CHECKING:
    from distributed import Client

__all__ = ["dask_client", "cluster_client", "slurm_cluster", "cores_per_worker"]


def cores_per_worker(workers: int) -> int:
    """CPU cores of this machine per LocalCluster worker process (at least one)."""
    return max(1, (os.cpu_count() or 1) // max(1, workers))


@contextlib.contextmanager
def dask_client(workers: int = 2, threads_per_worker: int = 1, scheduler: str | None = None,
                memory_limit: str = "auto") -> Iterator["Client"]:
    import dask
    from distributed import Client, LocalCluster

    if scheduler:
        try:
            client = Client(scheduler, timeout="20s")
        except (OSError, TimeoutError) as exc:
            raise ParameterError(f"--scheduler {scheduler}: cannot connect ({exc}); check the address and that the scheduler runs") from None
        with client:
            yield client
        return
    # The machine's cores are shared out between the worker processes; inside a worker, the model's forward
    # pass uses all of its share (torch's threads), whatever the number of task threads.
    cores = str(cores_per_worker(workers))
    env = {"OMP_NUM_THREADS": cores, "MKL_NUM_THREADS": cores, "OPENBLAS_NUM_THREADS": cores, "HF_HUB_OFFLINE": "1"}
    os.environ.update({k: v for k, v in env.items() if k == "HF_HUB_OFFLINE"})
    # Dask's default pre-spawn environment sets MALLOC_TRIM_THRESHOLD_=65536, which makes glibc hand every large
    # buffer back to the OS: each forward pass then page-faults its activations in again, 40 % slower on a CPU
    # (2.77 vs 1.94 s for a 1408-px window here). Keep the thread limits, drop that.
    spawn_env = {k: v for k, v in env.items() if k.endswith("_NUM_THREADS")}
    with dask.config.set({"distributed.worker.daemon": False, "distributed.admin.system-monitor.gil.enabled": False,
                          "distributed.logging.distributed": "error",
                          "distributed.nanny.pre-spawn-environ": spawn_env}):
        cluster = LocalCluster(n_workers=workers, threads_per_worker=threads_per_worker, processes=True,
                               memory_limit=memory_limit, dashboard_address=":0", silence_logs=50,
                               worker_class="distributed.Nanny", env=env)
        try:
            with Client(cluster) as client:
                yield client
        finally:
            cluster.close()


@contextlib.contextmanager
def cluster_client(cfg) -> Iterator["Client"]:
    """The Dask client a :class:`~pipeline.config.SegmentConfig` asks for (``scheduler``, ``cluster``, ``workers``)."""
    if cfg.cluster.kind == "slurm":
        from distributed import Client

        spec = cfg.cluster
        with slurm_cluster(spec, cfg.threads_per_worker) as cluster, Client(cluster) as client:
            cluster.scale(jobs=spec.jobs)
            try:
                client.wait_for_workers(1, timeout=spec.start_timeout_s)
            except TimeoutError:
                raise ParameterError(f"cluster: no SLURM worker job started within {spec.start_timeout_s:g} s "
                                     f"(squeue shows why); raise cluster.start_timeout_s or check queue/account") from None
            yield client
        return
    with dask_client(cfg.workers, cfg.threads_per_worker, cfg.scheduler, cfg.memory_limit) as client:
        yield client


def slurm_cluster(spec, threads_per_worker: int = 1):
    """dask-jobqueue's ``SLURMCluster`` for ``cluster: {kind: slurm, …}``; nothing is submitted until it is scaled.

    The job script exports the settings every worker needs (thread limits = its cores per process, no model hub)
    and nothing secret: sbatch passes the submitting environment (AWS_*, PREFECT_API_URL) on by default.
    Each worker runs ``threads_per_worker`` task threads (dask-jobqueue would give it all its cores; the model's
    forward pass already uses them), given last on its command line so it wins.
    """
    import sys

    try:
        from dask_jobqueue import SLURMCluster
    except ImportError:
        raise ParameterError("cluster: {kind: slurm} needs dask-jobqueue; pip install 'seamline[slurm]'") from None
    per_process = max(1, spec.cores // spec.processes)
    prologue = [f"export OMP_NUM_THREADS={per_process} MKL_NUM_THREADS={per_process} "
                f"OPENBLAS_NUM_THREADS={per_process} HF_HUB_OFFLINE=1", *spec.job_script_prologue]
    extra = list(spec.job_extra_directives)
    if spec.gpus:
        extra.append(f"--gres=gpu:{spec.gpus}")
    kw = dict(cores=spec.cores, processes=spec.processes, memory=spec.memory, walltime=spec.walltime,
              queue=spec.queue, account=spec.account, job_name="seamline-worker", job_extra_directives=extra,
              job_script_prologue=prologue, python=spec.python or sys.executable, interface=spec.interface,
              local_directory=spec.local_directory, log_directory=spec.log_directory,
              scheduler_options={"dashboard_address": ":0"},
              worker_extra_args=(["--resources", f"GPU={max(1, spec.gpus // spec.processes)}"] if spec.gpus else [])
              + ["--nthreads", str(threads_per_worker)])
    return SLURMCluster(**{k: v for k, v in kw.items() if v is not None})
