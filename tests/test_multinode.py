"""More than one Ray node, and a full object store: each scenario runs in its own process
(tests/support/multinode_scenario.py), since this pytest process holds the session's Ray."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys

import pytest

from pipelines.readers import webdataset

SCENARIO = os.path.join(os.path.dirname(__file__), "support", "multinode_scenario.py")


def run_scenario(name: str, out, timeout_s: float = 420) -> dict:
    """Run a scenario; its whole process group (Ray nodes included) ends with it, even on timeout."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    process = subprocess.Popen([sys.executable, SCENARIO, name, str(out)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        pytest.fail(f"scenario {name} did not finish within {timeout_s} s:\n{stderr[-3000:]}")
    finally:
        try:
            os.killpg(process.pid, signal.SIGKILL)  # Ray processes a failed scenario left behind
        except ProcessLookupError:
            pass
    assert process.returncode == 0, stderr[-3000:]
    return json.loads(stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def nodes(tmp_path_factory):
    """Both multi-node jobs, run one after the other on one 3-node cluster."""
    out = tmp_path_factory.mktemp("nodes")
    return out, run_scenario("nodes", out)


def test_stages_spread_over_nodes_and_a_lost_node_loses_no_sample(nodes):
    out, scenario = nodes
    result = scenario["remove-node"]
    workers, placement = result["workers"], result["placement"]
    # Each stage asks for one GPU; only the two workers have one each: one stage per worker.
    assert set(placement) == {"denoise", "decode"}
    assert {placement["denoise"], placement["decode"]} == set(workers)
    assert scenario["head"] not in placement.values()
    # The decode actor's node was removed after the first commit, mid-run.
    assert result["removed"]["node_id"] == placement["decode"]
    assert 1 <= result["removed"]["committed_before"] < 8
    assert result["error"] is None
    verify = result["verify"]
    assert verify["ok"], verify
    assert (verify["planned"], verify["samples"], verify["unique_keys"]) == (32, 32, 32)
    assert verify["missing"] == 0 and verify["duplicates"] == 0 and verify["failed"] == 0
    keys = sorted(s["__key__"] for s in webdataset(str(out / "remove-node")))
    assert keys == [f"{i:09d}" for i in range(32)]


def test_a_lost_node_that_never_comes_back_fails_the_job_after_the_timeout_and_keeps_its_shards(nodes):
    _, scenario = nodes
    result = scenario["lose-node"]
    assert result["removed"]["node_id"] == result["placement"]["decode"]
    assert 1 <= result["removed"]["committed_before"] < 8
    error = result["error"]
    assert error.startswith("StageStalled: stage 'decode' has had work and no live actor for 10 s"), error
    assert "num_gpus=1" in error and "rerun the same command to resume" in error
    # Not before the timeout, and not long after it: the clock starts at the stage's last finished
    # batch (its calls fail once Ray gives the lost actor up), and stages are looked at every 5 s.
    assert 10 <= result["failed_after_removal_s"] < 10 + 30
    # What was committed before the loss is intact: verify finds no damage, only missing shards.
    verify = result["verify"]
    assert not verify["ok"] and not verify["problems"], verify
    assert verify["samples"] >= 4 * result["removed"]["committed_before"] and verify["missing"] > 0
    # The failed run listed what it committed in index.json, as a finished one does.
    assert result["indexed"] == result["committed"] and len(result["committed"]) >= result["removed"]["committed_before"]


def test_spilled_latents_and_images_are_not_lost(tmp_path):
    result = run_scenario("spill", tmp_path / "out")
    summary = result["memory_summary"]
    spilled = re.search(r"Spilled (\d+) MiB, (\d+) objects", summary)
    restored = re.search(r"Restored (\d+) MiB, (\d+) objects", summary)
    assert spilled and int(spilled.group(2)) > 0, summary
    assert restored and int(restored.group(2)) > 0, summary
    verify = result["verify"]
    assert verify["ok"] and verify["samples"] == 8 and verify["missing"] == 0, verify
    samples = list(webdataset(str(tmp_path / "out")))
    assert len(samples) == 8 and all(s["png"] and s["latent.npy"] for s in samples)
