"""Shared fixtures: one real local Ray for the whole session (ray.init takes 5-8 s here).

The cluster declares 2 logical GPUs: actors that ask for one get their own CUDA_VISIBLE_DEVICES,
which is how GPU pinning is tested on machines without GPUs (torch then runs on the CPU).
"""

from __future__ import annotations

import os
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("latentmill-cache")
    os.environ["LATENTMILL_CACHE"] = str(path)
    return path


@pytest.fixture(scope="session")
def ray_cluster(cache_dir):
    """A real local Ray: 2 CPUs as on a laptop, 2 logical GPUs. Yields its address."""
    import ray

    from jobs.local import connect_ray

    os.environ.pop("RAY_ADDRESS", None)
    ray.init(num_cpus=2, num_gpus=2, include_dashboard=False, log_to_driver=False)
    connect_ray()  # no-op on an initialised Ray; keeps the same call path as the CLI
    address = ray.get_runtime_context().gcs_address
    yield address
    ray.shutdown()
