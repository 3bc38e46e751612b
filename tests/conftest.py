"""Shared fixtures. Test data is generated (tiny, regenerable); real data is read from ../shared/data."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")



@pytest.fixture(scope="session")
def dask_client_session():
    """One real LocalCluster (2 worker processes) for the whole session: starting one costs seconds."""
    from pipeline.stages.dispatch import dask_client

    with dask_client(workers=2, threads_per_worker=1) as c:
        yield c
