"""Shared fixtures: one real local Ray for the whole session (ray.init takes 5-8 s here).

The cluster declares 2 logical GPUs: actors that ask for one get their own CUDA_VISIBLE_DEVICES,
which is how GPU pinning is tested on machines without GPUs (torch then runs on the CPU).
"""

from __future__ import annotations

import faulthandler
import os
import sys
import warnings

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from tests.support.processes import Processes  # noqa: E402

pytest_plugins = ("pytester",)  # tests/test_suite_hygiene.py runs small test sessions of its own


# `make test` runs the files on two pytest-xdist workers, a file at a time each, handed out in
# collection order: the longest files go first so that neither worker is left alone with one at
# the end (the longest-processing-time-first rule). Measured file times, longest first.
LONGEST_FILES = (
    "test_decoder_repro.py", "test_storage.py", "test_integrity.py", "test_resume_after_kill.py", "test_train.py", "test_train_vae.py",
    "test_repair.py",
    "test_multinode.py", "test_pipeline.py", "test_video.py", "test_browse.py", "test_readme.py", "test_submit.py",
    "test_terminal.py", "test_lease.py", "test_bench_scheduler.py", "test_kinds.py", "test_bench_gpu.py",
    "test_pipeline_decoders.py", "test_accounting.py", "test_quality_monitor.py", "test_nightly.py",
    "test_encode_inputs.py", "test_suite_hygiene.py", "test_gpu_settings.py", "test_teacher_model.py",
    "test_estimate.py",
)


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: order within a file kept


@pytest.fixture
def processes():
    """Start a test's processes with `processes.start(command, **popen_kwargs)` or
    `processes.run(command, timeout=...)`: each is ended (its whole process group) when the test
    ends, passed, failed or timed out."""
    started = Processes()
    try:
        yield started
    finally:
        started.end_all()


@pytest.fixture(autouse=True)
def ray_left_clean():
    """No actor or driver of a test outlives it on the session's shared Ray cluster: what is left
    (a failed test's driver, an actor a test kept) is ended, with a warning naming it, before the
    next test starts (a leftover driver holding the cluster's CPUs once made every later test wait
    for its actors until the 900 s start timeout)."""
    ray = sys.modules.get("ray")  # only where a test has imported Ray: the check needs it running
    if ray is None or not ray.is_initialized():
        yield
        return
    from tests.support import ray_leftovers

    before = set(ray_leftovers.live_actors())
    yield
    if ray.is_initialized():
        ended = ray_leftovers.end_leftovers(before)
        if ended:
            warnings.warn(f"ended what this test left on the shared Ray cluster: {'; '.join(ended)}", stacklevel=1)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """A backstop behind pytest-timeout's signal method (which fails the test, with every
    thread's stack, and runs its teardown): should a test be stuck where no signal handler runs, dump
    the stacks and exit 2 minutes after its timeout; what it started dies with this process."""
    from pytest_timeout import _get_item_settings  # the timeout as pytest-timeout reads it: ini, option, marker

    timeout = _get_item_settings(item).timeout
    if timeout:
        faulthandler.dump_traceback_later(timeout + 120, exit=True)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("latentmill-cache")
    os.environ["LATENTMILL_CACHE"] = str(path)
    return path


# Names of the environment variables that hold the local S3 server's keys: specs name these,
# never the keys themselves.
S3_KEY_ENV = "LATENTMILL_TEST_S3_KEY"
S3_SECRET_ENV = "LATENTMILL_TEST_S3_SECRET"


@pytest.fixture(scope="session")
def s3_server():
    """A real S3-compatible server (moto, credentials checked) on 127.0.0.1, in its own process."""
    from infra.local_s3 import LocalS3

    server = LocalS3(buckets=("latentmill",))
    os.environ[S3_KEY_ENV] = server.key
    os.environ[S3_SECRET_ENV] = server.secret
    yield server
    server.close()


@pytest.fixture(scope="session")
def ray_cluster(cache_dir, s3_server):
    """A real local Ray: 2 CPUs as on a laptop, 2 logical GPUs. Yields its address.

    Started after the S3 server, so its workers inherit the variables that hold the S3 keys.
    """
    import ray

    from jobs.local import connect_ray

    os.environ.pop("RAY_ADDRESS", None)
    # address="local": a new cluster even when another (a `ray start` head) runs on this machine.
    ray.init(address="local", num_cpus=2, num_gpus=2, include_dashboard=False, log_to_driver=False)
    connect_ray()  # no-op on an initialised Ray; keeps the same call path as the CLI
    address = ray.get_runtime_context().gcs_address
    yield address
    ray.shutdown()


def s3_storage(server, **changes) -> dict:
    """The `output.storage` mapping of a spec that writes to `server`."""
    return {
        "endpoint_url": server.endpoint,
        "region": "us-east-1",
        "access_key_id_env": S3_KEY_ENV,
        "secret_access_key_env": S3_SECRET_ENV,
        **changes,
    }


@pytest.fixture(scope="session")
def photos(tmp_path_factory):
    """64 smooth colour images of three sizes and aspect ratios: the input of encode jobs (which
    must resize and crop them)."""
    import numpy as np
    from PIL import Image

    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(3)
    for i in range(64):
        h, w = [(144, 144), (160, 136), (130, 200)][i % 3]
        y, x = np.mgrid[0:h, 0:w]
        base = rng.uniform(0, 255, 3)
        pixels = np.stack([(base[c] + 80 * np.sin(x / (5 + i % 7) + c) + 60 * np.cos(y / 7)) % 256 for c in range(3)], -1)
        Image.fromarray(pixels.astype(np.uint8)).save(folder / f"photo-{i:02d}.png")
    return folder
