"""`concurrency: auto`: the GPU split as a pure function of measured per-item times, the re-balance
decision, and the scheduler acting on it (fake pools, no Ray); then one real run on the session Ray
whose decode stage slows down mid-run."""

from __future__ import annotations

import itertools
import random
from collections import deque

import pytest

from pipelines.accounting import RunAccounting
from pipelines.autoscale import (
    GpuRebalancer,
    best_split,
    rebalancer_for,
    split_throughput,
)
from pipelines.config import StageResources
from pipelines.errors import SchedulingError
from pipelines.inprocess import Done as Ref
from pipelines.pipeline import StageDef
from pipelines.scheduler import ShardScheduler
from tests.support.fake_engine import FakePool, FakeRuntime, add, first, plan_of


def brute_force_best(times: dict, gpus: int) -> float:
    names = list(times)
    best = 0.0
    for counts in itertools.product(range(1, gpus + 1), repeat=len(names)):
        if sum(counts) == gpus:
            best = max(best, split_throughput(dict(zip(names, counts)), times))
    return best


@pytest.mark.parametrize("seed", range(20))
def test_best_split_matches_a_brute_force_search(seed):
    rng = random.Random(seed)
    stages = rng.choice([2, 3])
    times = {f"s{i}": rng.uniform(0.01, 5.0) for i in range(stages)}
    gpus = rng.randint(stages, 20)
    split = best_split(times, gpus)
    assert sum(split.values()) == gpus and min(split.values()) >= 1
    assert split_throughput(split, times) == pytest.approx(brute_force_best(times, gpus))


def test_profile_splits_put_most_gpus_on_denoise():
    # SDXL with the full VAE (3.0 s vs 0.30 s per image) and with a light decoder (0.025 s).
    assert best_split({"denoise": 3.0, "decode": 0.30}, 16) == {"denoise": 14, "decode": 2}
    assert best_split({"denoise": 3.0, "decode": 0.025}, 16) == {"denoise": 15, "decode": 1}


def feed(rebalancer, stage, per_item_s, batches, items=4):
    for _ in range(batches):
        rebalancer.record(stage, items, per_item_s * items)


def test_an_actors_first_batch_is_its_cold_start_and_does_not_decide_the_split():
    r = GpuRebalancer(("denoise", "decode"), slots=16, warmup_batches=3, window=8, min_gain=0.05, cooldown_s=10)
    feed(r, "denoise", 3.0, 3)
    for _ in range(8):  # every decode actor's first batch, twice its pace
        r.record("decode", 4, 0.6 * 4, warm=False)
    assert r.decide(0.0, {"denoise": 8, "decode": 8}) is None  # decode has no warm batch yet
    feed(r, "decode", 0.3, 3)
    assert r.decide(1.0, {"denoise": 8, "decode": 8}).split == {"denoise": 14, "decode": 2}


def test_rebalancer_waits_for_warm_up_then_fixes_a_bad_split_and_follows_drift():
    r = GpuRebalancer(("denoise", "decode"), slots=16, warmup_batches=3, window=8, min_gain=0.05, cooldown_s=10)
    bad = {"denoise": 1, "decode": 15}
    feed(r, "denoise", 3.0, 3)
    feed(r, "decode", 0.3, 2)
    assert r.decide(0.0, bad) is None  # decode not warm yet
    feed(r, "decode", 0.3, 1)
    decision = r.decide(1.0, bad)
    assert decision.split == {"denoise": 14, "decode": 2} and decision.previous == bad
    assert decision.predicted > 10 * decision.previous_predicted
    assert "after warm-up" in decision.describe() and "denoise 14, decode 2" in decision.describe()

    # Decode slows down 5x: the window fills with slow batches, but nothing moves within the cooldown.
    feed(r, "decode", 1.5, 8)
    assert r.decide(5.0, decision.split) is None
    drift = r.decide(12.0, decision.split)
    assert drift.split == {"denoise": 11, "decode": 5} and "drifted" in drift.reason
    # Measured times that do not promise min_gain change nothing (no flapping).
    feed(r, "decode", 1.45, 8)
    assert r.decide(30.0, drift.split) is None


def test_colocation_is_evaluated_and_logged_for_a_light_stage():
    r = GpuRebalancer(("denoise", "decode"), slots=16, warmup_batches=1, cooldown_s=0)
    feed(r, "denoise", 3.0, 1)
    feed(r, "decode", 0.025, 1)
    decision = r.decide(0.0, {"denoise": 8, "decode": 8})
    # 15/1 gives 5.0 images/s; 16 GPUs time-shared at 90% would give 0.9 * 16 / 3.025 = 4.76: not better.
    assert decision.split == {"denoise": 15, "decode": 1}
    assert decision.colocation == pytest.approx(0.9 * 16 / 3.025)
    assert "co-locating" not in decision.describe()
    r = GpuRebalancer(("denoise", "decode"), slots=3, warmup_batches=1, cooldown_s=0)
    feed(r, "denoise", 1.0, 1)
    feed(r, "decode", 0.1, 1)
    decision = r.decide(0.0, {"denoise": 1, "decode": 2})  # 2/1 gives 1.0/s; sharing 3 GPUs: 2.45/s
    assert "co-locating all stages on every GPU would predict 2.45 items/s" in decision.describe()


def test_auto_stages_split_actors_of_their_gpu_share():
    def stage(name, concurrency, num_gpus=1):
        return StageDef(name, object, {}, StageResources(num_gpus=num_gpus, num_cpus=0.1, concurrency=concurrency))

    assert rebalancer_for([stage("denoise", 2), stage("decode", 1)], None, 8) is None
    r = rebalancer_for([stage("denoise", "auto", 0.5), stage("decode", "auto", 0.5)], 4, 8)
    assert r.stages == ("denoise", "decode") and r.slots == 8
    assert r.initial_split() == {"denoise": 4, "decode": 4}
    with pytest.raises(SchedulingError, match=r"1 GPUs are available \(stages.gpus\)"):
        rebalancer_for([stage("denoise", "auto"), stage("decode", "auto")], 1, 8)
    with pytest.raises(SchedulingError, match="same num_gpus"):
        rebalancer_for([stage("denoise", "auto", 1), stage("decode", "auto", 0.5)], None, 8)


class ResizablePool(FakePool):
    """A fake pool whose batches report `seconds(index)` of busy time per sample, and which records
    the sizes the scheduler asks for."""

    def __init__(self, name, fn, seconds, target):
        super().__init__(name, fn, actors=target)
        self.seconds, self.target, self.sizes = seconds, target, []

    def resize(self, actors):
        self.target = actors
        self.sizes.append(actors)

    def submit(self, payload, attempt=0):
        result_ref, _, member = super().submit(payload, attempt)
        busy = sum(self.seconds(int(key)) for key in result_ref.value["keys"])
        return result_ref, Ref({"items": len(result_ref.value["keys"]), "busy_s": busy, "started_at": 0.0}), member


def test_scheduler_moves_gpus_when_decode_slows_down_mid_run():
    plan = plan_of(total=600, per_shard=12)
    denoise = ResizablePool("denoise", first, lambda i: 2.0, target=4)
    # Decode takes 0.2 s per sample, then 1.0 s from sample 300 on.
    decode = ResizablePool("decode", add("decode"), lambda i: 0.2 if i < 300 else 1.0, target=4)
    rebalancer = GpuRebalancer(("denoise", "decode"), slots=8, warmup_batches=3, window=6, cooldown_s=0)
    accounting = RunAccounting(run_id="t", planned=len(plan), already_committed=0, to_generate=len(plan))
    runtime = FakeRuntime()
    scheduler = ShardScheduler(plan, [denoise, decode], runtime, accounting, batch_size=3, max_retries=0,
                               write_concurrency=2, write_cpus=0.25, committed=0, on_commit=lambda n, m: None,
                               rebalancer=rebalancer)
    scheduler.run(deque((i, None) for i in range(plan.num_shards)))
    # After warm-up: 2.0 vs 0.2 s -> 7/1; once decode takes 1.0 s -> 5/3 (min(5/2, 3/1) = 2.5/s), with
    # steps on the way while the window fills with slow batches (no cooldown here).
    splits = [d.split for d in rebalancer.decisions]
    assert splits[0] == {"denoise": 7, "decode": 1} and splits[-1] == {"denoise": 5, "decode": 3}
    assert [d.reason for d in rebalancer.decisions[1:]] == ["as measured rates drifted"] * (len(splits) - 1)
    assert denoise.sizes == [s["denoise"] for s in splits] and decode.sizes == [s["decode"] for s in splits]
    assert [n for n in accounting.notes if n.startswith("concurrency auto")] == [d.describe() for d in rebalancer.decisions]
    assert accounting.written == 600 and len(runtime.written) == plan.num_shards


def test_spec_takes_concurrency_auto_and_a_gpu_budget(tmp_path):
    import yaml

    from jobs.dry_run import describe
    from jobs.local import pipeline_for
    from jobs.spec import parse_spec
    from pipelines.errors import ConfigError
    from tests.support.jobspecs import spec_dict

    data = spec_dict(tmp_path / "o", stages__denoise__concurrency="auto", stages__decode__concurrency="auto",
                     stages__gpus=4)
    spec = parse_spec(yaml.safe_dump(data), source="job.yaml")
    assert spec.stages.denoise.concurrency == spec.stages.decode.concurrency == "auto" and spec.stages.gpus == 4
    pipeline = pipeline_for(spec)
    assert pipeline.gpus == 4 and "actors=auto" in describe(spec, pipeline)
    assert rebalancer_for(pipeline.stages, pipeline.gpus, cluster_gpus=0).slots == 4
    for field, value in (("stages__decode__concurrency", "sometimes"), ("stages__gpus", 0)):
        with pytest.raises(ConfigError, match=field.replace("__", ".")):
            parse_spec(yaml.safe_dump(spec_dict(tmp_path / "o", **{field: value})), source="job.yaml")
