"""Run a latentmill job on a multi-node Ray cluster on this machine, in its own process.

    python tests/support/multinode_scenario.py nodes OUT_DIR
    python tests/support/multinode_scenario.py spill OUT_DIR

A pytest process already holds the session's Ray, so each scenario runs here, in a process the
test starts and ends; the last line printed is a JSON result for the test to check.

nodes: a head (CPUs only) and two worker nodes with one logical GPU each. Denoise and decode each
ask for a GPU, so their actors must sit on different workers and never on the head. Two jobs run
on this cluster, one after the other (starting a cluster costs more than a job here):
- remove-node (OUT_DIR/remove-node): once the first shard is committed, the worker running the
  decode actor is removed (its processes and its object store are gone) and a fresh worker joins,
  as a Kubernetes operator or the autoscaler would bring one; the job must still finish with every
  planned sample exactly once.
- lose-node (OUT_DIR/lose-node): the same on the two workers left, but no worker joins: the decode
  actor can never start again, and the job must fail once the stall timeout has passed (not wait
  forever), keeping what it committed.

spill: one node whose object store is mostly taken by a pinned object, so the job's latents and
images must be spilled to disk and restored; none may be lost.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)

import ray  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402

from infra.local_s3 import free_port  # noqa: E402
from jobs.local import run_job  # noqa: E402
from jobs.spec import parse_spec  # noqa: E402
from pipelines.sinks.layout import OutputLayout  # noqa: E402
from pipelines.verify import verify_output  # noqa: E402
from tests.support.jobspecs import spec_dict  # noqa: E402

MB = 1024 * 1024
STALL_TIMEOUT_S = 10  # lose-node: how long a stage may have no live actor


def _spec(out: str, **changes):
    import yaml

    return parse_spec(yaml.safe_dump(spec_dict(out, **changes)))


def _node_args(**extra) -> dict:
    return {"include_dashboard": False, "object_store_memory": 100 * MB, **extra}


def nodes(out: str) -> dict:
    temp_dir = tempfile.mkdtemp(prefix="lm-mn-", dir="/tmp")
    cluster = Cluster(initialize_head=True, head_node_args=_node_args(
        num_cpus=2, num_gpus=0, gcs_server_port=free_port(), dashboard_agent_listen_port=free_port(), temp_dir=temp_dir,
        # The dashboard serves Ray's state API, which tells where each actor runs.
        include_dashboard=True, dashboard_host="127.0.0.1", dashboard_port=free_port()))
    workers = [cluster.add_node(**_node_args(num_cpus=1, num_gpus=1)) for _ in range(2)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    result = {"head": cluster.head_node.node_id}
    for name, replace in (("remove-node", True), ("lose-node", False)):
        deadline = time.monotonic() + 60
        while _placement(cluster.address) and time.monotonic() < deadline:
            time.sleep(0.2)  # the previous job's actors are still exiting
        result[name] = remove_node(cluster, workers, os.path.join(out, name), replace)
    ray.shutdown()
    cluster.shutdown()
    shutil.rmtree(temp_dir, ignore_errors=True)
    return result


def remove_node(cluster, workers: list, out: str, replace: bool) -> dict:
    """Run a job, remove its decode actor's worker node after the first commit, and (if `replace`)
    add a fresh worker node; `workers` is updated to the worker nodes left."""
    spec = _spec(
        out, num_images=32, output__samples_per_shard=4,
        stages__denoise={"num_gpus": 1, "num_cpus": 0.5, "batch_size": 2},
        stages__decode={"num_gpus": 1, "num_cpus": 0.25, "batch_size": 2},
        stages__write={"num_cpus": 0.25, "concurrency": 2},
        # lose-node: slow denoising (~0.2 s a batch), so decode work is left when its node goes, however
        # late the loss is triggered on a loaded machine (at 2 steps, a CI run had finished all of it).
        **({} if replace else {"sampler__steps": 50}),
    )
    outcome: dict = {}

    def run():  # in a thread: Ray's node handling must stay in the main thread (signal handlers)
        try:
            outcome["report"] = run_job(spec, progress=False, start_timeout_s=120,
                                        stall_timeout_s=None if replace else STALL_TIMEOUT_S)
        except BaseException as exc:
            outcome["error"] = f"{type(exc).__name__}: {exc}"
            outcome["failed_at"] = time.monotonic()

    workers_at_start = [w.node_id for w in workers]
    job = threading.Thread(target=run, daemon=True)
    job.start()
    # Once the first shard is committed, take the decode actor's node away and bring a new one.
    layout = OutputLayout(out)
    placement, removed = {}, {}
    while job.is_alive() and not removed:
        markers = layout.committed_markers() if layout.fs.exists(layout.path("shards")) else {}
        placement = _placement(cluster.address)
        if len(placement) == 2 and markers:
            victim = next(w for w in workers if w.node_id == placement["decode"])
            removed.update(node_id=victim.node_id, committed_before=len(markers), at=time.monotonic())
            cluster.remove_node(victim, allow_graceful=False)
            workers.remove(victim)
            if replace:
                workers.append(cluster.add_node(**_node_args(num_cpus=1, num_gpus=1)))
        time.sleep(0.2)
    job.join(timeout=300)
    report = outcome.get("report", {})
    return {
        "workers": workers_at_start,
        "placement": placement,
        "removed": removed,
        "error": outcome.get("error") or ("still running after 300 s" if job.is_alive() else None),
        "generated": report.get("generated"),
        "failures": len(report.get("failures", [])),
        "failed_after_removal_s": outcome["failed_at"] - removed["at"] if "failed_at" in outcome and removed else None,
        "verify": verify_output(out),
        "committed": sorted(layout.committed_markers()),
        "indexed": [s["name"] for s in layout.read_index()["shards"]],
    }


def _placement(address: str) -> dict:
    """stage -> node of its live actor. The stages ask for different CPUs (denoise 0.5, decode
    0.25), which is how an actor's stage shows in Ray's state API."""
    from ray.util.state import list_actors

    stage_of_cpus = {0.5: "denoise", 0.25: "decode"}
    actors = list_actors(address=address, filters=[("state", "=", "ALIVE"), ("class_name", "=", "StageActor")], detail=True)
    return {stage_of_cpus[a.required_resources["CPU"]]: a.node_id for a in actors}


def spill(out: str) -> dict:
    temp_dir = tempfile.mkdtemp(prefix="lm-sp-", dir="/tmp")
    spill_dir = os.path.join(temp_dir, "spill")
    ray.init(num_cpus=2, num_gpus=0, include_dashboard=False, log_to_driver=False, object_store_memory=80 * MB,
             _temp_dir=temp_dir, object_spilling_directory=spill_dir)
    import numpy as np

    # A zero-copy view of an object pins it in shared memory (it can be neither spilled nor
    # evicted while the view lives): the job gets what is left, a few MB.
    ballast = ray.get(ray.put(np.ones(77 * MB, dtype=np.uint8)))
    # 768x768 with latents saved: a decoded batch of 2 is ~3.5 MB; two do not fit beside the ballast.
    spec = _spec(out, num_images=8, sampler__height=768, sampler__width=768, output__samples_per_shard=4,
                 output__save_latents=True, stages__denoise={"num_gpus": 0, "num_cpus": 1, "batch_size": 2},
                 stages__decode={"num_gpus": 0, "num_cpus": 0.5, "batch_size": 2})
    report = run_job(spec, progress=False, start_timeout_s=120)
    from ray._private.internal_api import memory_summary

    summary = memory_summary(address=ray.get_runtime_context().gcs_address, stats_only=True)
    del ballast
    result = {"generated": report["generated"], "verify": verify_output(out), "memory_summary": summary}
    ray.shutdown()
    shutil.rmtree(temp_dir, ignore_errors=True)
    return result


if __name__ == "__main__":
    scenario, out = sys.argv[1], sys.argv[2]
    scenarios = {"nodes": nodes, "spill": spill}
    result = scenarios[scenario](out)
    print(json.dumps(result, default=str))
