"""`latentmill run SPEC --estimate`: the projection checked against figures worked out by hand, then the
command on a real local Ray with the tiny model (the measured batches run together, a table, exit 0,
nothing at the output URL), a stage that fails (exit 1) and a spec error (exit 2, one line)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

from jobs.estimate.project import AutoBudget, auto_budget, project
from jobs.estimate.render import render
from jobs.estimate.timings import BatchTime, Measurement, StageTimes
from pipelines.config import StageResources
from pipelines.pipeline import StageDef, Units
from tests.support.jobspecs import kind_spec_dict

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGES = Units("image", "images", "generated")
PRICES = {"gpu_hour": 2.5, "cpu_hour": 0.04, "currency": "USD"}


def _stage(name, actors, items, busy_s, cpus=1.0, gpus=0.0, warmup_s=9.0):
    return StageTimes(name, actors, items, cpus, gpus, BatchTime(items, warmup_s), BatchTime(items, busy_s), load_s=3.0)


def _measured(write_s=0.4, write_slots=2, gpus=0.0) -> Measurement:
    # denoise 0.5 s/image, decode 0.125 s/image, write 0.05 s/image (at write_s=0.4); Ray 10 s + actors 20 s.
    return Measurement((_stage("denoise", 1, 8, 4.0, gpus=gpus), _stage("decode", 1, 8, 1.0, cpus=0.5, gpus=gpus),
                        _stage("write", write_slots, 8, write_s, cpus=0.25)), ray_s=10.0, actors_s=20.0,
                       cluster={"CPU": 2.0, "GPU": 0.0})


def test_the_bottleneck_is_the_lowest_capacity_and_the_wall_time_adds_start_up_fill_and_the_stream():
    p = project(_measured(), items=128, shard_size=32, prices=PRICES, auto=AutoBudget(note="no GPUs"), units=IMAGES)
    assert p["capacity_items_per_s"] == {"denoise": 2.0, "decode": 8.0, "write": 40.0}
    assert p["bottleneck"]["stage"] == "denoise" and p["items_per_s"] == 2.0
    assert p["bottleneck"]["why"].startswith("lowest capacity: 0.5 s per image x 1 actor = 2 images/s; others: decode 8/s")
    assert p["write_bound_items_per_s"] == 40.0
    # fill: one decode batch (1.0 s) + one shard of 32 through the write (32 x 0.05 = 1.6 s); stream: 128 / 2.0 = 64 s
    assert p["startup_s"] == 30.0 and p["fill_s"] == pytest.approx(2.6) and p["wall_s"] == pytest.approx(96.6)
    # CPUs held from the actors' start to the end, (1 + 0.5) x (20 + 66.6) s, plus the write tasks: 128 x 0.05 s x 0.25
    cpu_s = 1.5 * 86.6 + 1.6
    assert p["cpu_hours"] == pytest.approx(cpu_s / 3600) and p["gpu_hours"] == 0
    assert p["cost"]["total"] == pytest.approx(cpu_s / 3600 * 0.04, abs=1e-6)
    assert p["cost"]["per_1000_images"] == pytest.approx(1000 * cpu_s / 3600 * 0.04 / 128, abs=1e-6)
    assert p["auto"] == {"note": "no GPUs"}
    fast_write = project(_measured(write_s=0.001), items=8, shard_size=8, prices=None, auto=AutoBudget(), units=IMAGES)
    assert fast_write["bottleneck"]["why"].endswith("others: decode 8/s, write 16,000/s")  # not 1.6e+04


def test_a_slow_write_is_the_bound():
    # 8 images in 10 s per write slot: 1.25 s/image, 2 slots: 1.6/s, below denoise's 2/s
    p = project(_measured(write_s=10.0), items=100, shard_size=10, prices=None, auto=AutoBudget(note="-"), units=IMAGES)
    assert p["bottleneck"]["stage"] == "write" and p["items_per_s"] == pytest.approx(1.6)
    assert p["write_bound_items_per_s"] == pytest.approx(1.6)
    assert "x 2 write slots = 1.6 images/s" in p["bottleneck"]["why"]
    assert p["fill_s"] == pytest.approx(4.0 + 1.0)  # every stage's batch, the write (the bottleneck) left out
    assert p["wall_s"] == pytest.approx(30.0 + 5.0 + 100 / 1.6) and p["cost"] is None


def test_the_auto_split_is_the_rebalancers_rule_on_the_measured_times():
    # 8 GPUs: d/0.5 against e/0.125 -> 6 + 2 (min(12, 16) = 12/s); 7 + 1 gives min(14, 8) = 8/s.
    p = project(_measured(gpus=1.0), items=1200, shard_size=32, prices=PRICES,
                auto=AutoBudget(("denoise", "decode"), 8), units=IMAGES)
    assert p["auto"]["split"] == {"denoise": 6, "decode": 2} and p["auto"]["items_per_s"] == 12.0
    assert p["auto"]["bottleneck"]["stage"] == "denoise"
    assert p["actors"] == {"denoise": 1, "decode": 1, "write": 2}  # the spec's own actors are projected apart
    assert p["items_per_s"] == 2.0
    # A write of 0.1 s/image on one slot (10/s) caps the split's 12/s.
    capped = project(_measured(write_s=0.8, write_slots=1, gpus=1.0), items=1200, shard_size=32, prices=None,
                     auto=AutoBudget(("denoise", "decode"), 8, in_spec=True), units=IMAGES)
    assert capped["auto"]["items_per_s"] == 10.0 and capped["auto"]["bottleneck"]["stage"] == "write"
    assert capped["actors"]["denoise"] == 6 and capped["items_per_s"] == 10.0  # the spec asked for auto: it runs the split


def _defs(denoise_gpus="auto", concurrency=1):
    return (StageDef("read", "x:Read", {}, StageResources(num_gpus=0, num_cpus=0.25)),
            StageDef("denoise", "x:Denoise", {}, StageResources(num_gpus=denoise_gpus, concurrency=concurrency)),
            StageDef("decode", "x:Decode", {}, StageResources(num_gpus="auto", concurrency=concurrency)))


def test_the_auto_budget_is_the_jobs_own_rule():
    assert auto_budget(_defs(), None, 8) == AutoBudget(("denoise", "decode"), 8)  # the GPU stages, read left out
    assert auto_budget(_defs(denoise_gpus=0.5), None, 8).note.startswith("concurrency auto: stages denoise, decode "
                                                                          "must ask for the same num_gpus")
    assert auto_budget(_defs(concurrency="auto"), 4, 8) == AutoBudget(("denoise", "decode"), 4, in_spec=True)
    assert auto_budget(_defs(), None, 0).note.startswith("the cluster has no GPUs and the spec sets no stages.gpus")
    assert auto_budget(_defs(), 3, 0) == AutoBudget(("denoise", "decode"), 3)  # CPU actors: the budget counts them
    assert auto_budget(_defs(denoise_gpus=0)[:2], None, 8).note.startswith("no stage of this job takes GPUs")


def test_the_table_names_every_stage_and_the_projection():
    p = project(_measured(), items=128, shard_size=32, prices=PRICES, auto=AutoBudget(note="no GPUs"), units=IMAGES)
    text = render({"job": "qs", "kind": "generate", "output_url": "/o", "items": 128, "shards": 4,
                   "units": {"singular": "image", "plural": "images"}, "cluster": {"CPU": 2.0, "GPU": 0.0},
                   "startup": {"ray_s": 10.0, "actors_s": 20.0},
                   "stages": [s.as_dict() for s in _measured().stages], "projection": p})
    assert "denoise" in text and "s/image" in text and "capacity/s" in text
    assert "bottleneck  denoise: lowest capacity" in text
    assert "throughput  2 images/s steady (write bound 40 images/s)" in text
    assert "wall time   1:37 (96.6 s) = start-up 30.0 s (Ray 10.0 s, actors 20.0 s) + fill 2.6 s" in text
    assert "auto split  not applicable: no GPUs" in text
    assert all(len(line) <= 100 for line in text.splitlines()), text


# -- the command, on a real local Ray ------------------------------------------------------------------

def _cli(args: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": REPO}
    return subprocess.run([sys.executable, "-m", "jobs.cli", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture
def tiny_spec(tmp_path):
    spec = tmp_path / "job.yaml"
    # slow: a denoise batch takes long enough (about half a second here) that a stage submitted with it
    # visibly starts before it ends.
    spec.write_text(yaml.safe_dump(kind_spec_dict("generate", tmp_path / "out", slow=True, num_images=64,
                                                  cost={"gpu_hour": 2.5, "cpu_hour": 0.04})))
    return spec


def test_an_estimate_measures_the_stages_together_prints_the_table_and_writes_nothing(ray_cluster, tiny_spec):
    done = _cli(["run", str(tiny_spec), "--estimate", "--json", "--address", ray_cluster])
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert not (tiny_spec.parent / "out").exists()  # no folder, no latentmill.json, no lease
    assert [s["name"] for s in result["stages"]] == ["denoise", "decode", "write"]
    for stage in result["stages"]:
        assert stage["warmup"]["items"] == stage["measured"]["items"] == 4 and stage["measured"]["s"] > 0
    assert all(s["load_s"] > 0 for s in result["stages"][:2])
    # The warm-up batch goes through the stages in turn (decode needs denoise's output); the measured
    # batches run at the same time, sharing the cores as a run does: decode's began before denoise's
    # ended (one stage at a time, it would wait for denoise's measured output).
    denoise, decode = result["stages"][:2]
    assert decode["warmup"]["started_at"] >= denoise["warmup"]["started_at"] + denoise["warmup"]["s"]
    assert decode["measured"]["started_at"] < denoise["measured"]["started_at"] + denoise["measured"]["s"], (
        denoise["measured"], decode["measured"])
    assert "estimate: measured batches through denoise, decode at the same time" in done.stderr
    p = result["projection"]
    assert p["items_per_s"] == min(p["capacity_items_per_s"].values())
    assert p["wall_s"] > p["startup_s"] > 0 and p["cost"]["per_1000_images"] > 0
    assert p["auto"]["note"].startswith("no stage of this job takes GPUs")  # the test spec's ask for num_gpus 0
    for phase in ("connecting to the Ray cluster", "Ray ready in", "starting actors and loading models"):
        assert phase in done.stderr
    text = render(result)
    assert "bottleneck" in text and "wall time" in text and "cost" in text


def test_a_stage_that_fails_is_exit_1_and_a_spec_error_exit_2(ray_cluster, tiny_spec):
    failed = _cli(["run", str(tiny_spec), "--estimate", "--address", ray_cluster,
                   "--inject-fault", "decode:raise:000000001"])
    assert failed.returncode == 1, failed.stderr
    assert "estimate: stage decode on the warm-up batch failed: InjectedFault" in failed.stderr
    assert not (tiny_spec.parent / "out").exists()
    bad = _cli(["run", str(tiny_spec), "--estimate", "--set", "stages.denoise.batch_size=0"])
    assert bad.returncode == 2
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 1 and "stages.denoise.batch_size" in lines[0] and "positive integer" in lines[0], lines
