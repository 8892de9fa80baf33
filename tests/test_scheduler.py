"""The shard scheduler without Ray: fake pools that run stages in this process, real accounting.

These pin the engine's rules for any chain length: shards stay whole, outputs flow stage to stage,
failed batches split and retry from the first stage, dead actors are reported to their pool,
repairs run only the listed keys, and the number of shards in flight stays bounded.
"""

from __future__ import annotations

import threading
from collections import deque

import pytest

from pipelines.accounting import RunAccounting
from pipelines.errors import OutputError, StageStalled
from pipelines.inprocess import Done as Ref
from pipelines.scheduler import ShardScheduler
from tests.support.fake_engine import ActorDied, FakePool, FakeRuntime, add, first, plan_of


def run(plan, pools, todo, max_retries=2):
    runtime = FakeRuntime()
    accounting = RunAccounting(run_id="t", planned=len(plan), already_committed=0, to_generate=len(plan))
    commits = []
    scheduler = ShardScheduler(
        plan, pools, runtime, accounting, batch_size=3, max_retries=max_retries, write_concurrency=2,
        write_cpus=0.25, committed=0, on_commit=lambda name, marker: commits.append(name),
    )
    scheduler.run(deque(todo))
    return runtime, accounting, commits, scheduler


@pytest.mark.parametrize("length", [1, 2, 4])
def test_any_chain_length_writes_every_shard_whole_in_key_order(length):
    plan = plan_of()
    pools = [FakePool("s0", first)] + [FakePool(f"s{i}", add(f"s{i}")) for i in range(1, length)]
    runtime, accounting, commits, _ = run(plan, pools, [(i, None) for i in range(plan.num_shards)])
    assert sorted(commits) == ["00000", "00001", "00002"]
    for index in range(plan.num_shards):
        written = runtime.written[plan.shard(index).name]
        assert written["keys"] == [s.key for s in plan.shard(index).samples]
        # Every batch went through every stage, in chain order, and kept its first stage's data.
        for out in written["outputs"]:
            assert out["trail"] == ["first"] + [f"s{i}" for i in range(1, length)]
    assert accounting.written == len(plan)
    assert [p.calls[0][0] for p in pools] == [("000000000", "000000001", "000000002")] * length


def test_a_failing_sample_is_split_out_retried_from_the_first_stage_and_recorded():
    plan = plan_of(total=8, per_shard=8)

    def fail(keys, attempt):
        return ValueError("bad latents") if "000000004" in keys else None

    pools = [FakePool("denoise", first), FakePool("decode", add("decode"), fail=fail)]
    runtime, accounting, _, _ = run(plan, pools, [(0, None)], max_retries=2)
    written = runtime.written["00000"]
    assert sorted(written["keys"]) == [s.key for s in plan.shard(0).samples if s.key != "000000004"]
    assert written["failed"] == [{"key": "000000004", "stage": "decode", "error": "ValueError: bad latents",
                                  "attempts": 3}]
    # The batch 3..5 failed whole (attempt 0), then sample 4 alone, from denoise, on attempts 1 and 2
    # (max_retries=2): three failed decode batches in all.
    denoised_alone = [attempt for keys, attempt in pools[0].calls if keys == ("000000004",)]
    assert denoised_alone == [1, 2]
    assert accounting.failed_samples == 1 and accounting.stages["decode"].failed_batches == 3


def test_a_dead_actor_is_reported_to_its_pool_and_its_batch_retried():
    plan = plan_of(total=3, per_shard=3)

    def die_once(keys, attempt):
        return ActorDied("worker died") if attempt == 0 else None

    pools = [FakePool("denoise", first, fail=die_once), FakePool("decode", add("decode"))]
    runtime, _, _, _ = run(plan, pools, [(0, None)])
    assert pools[0].released_dead == 1
    assert runtime.written["00000"]["keys"] == ["000000000", "000000001", "000000002"]
    assert runtime.written["00000"]["failed"] == []


def test_repair_runs_only_the_listed_keys():
    plan = plan_of(total=8, per_shard=4)
    pools = [FakePool("denoise", first), FakePool("decode", add("decode"))]
    runtime, _, _, _ = run(plan, pools, [(1, frozenset({"000000005", "000000007"}))])
    assert list(runtime.written) == ["00001"]
    assert runtime.written["00001"]["repair"] is True
    assert sorted(runtime.written["00001"]["keys"]) == ["000000005", "000000007"]
    assert sorted(k for keys, _ in pools[0].calls for k in keys) == ["000000005", "000000007"]


def test_shards_in_flight_stay_bounded_and_a_write_error_names_the_shard():
    plan = plan_of(total=400, per_shard=4)
    pools = [FakePool("denoise", first), FakePool("decode", add("decode"))]
    runtime = FakeRuntime()
    peak = []
    accounting = RunAccounting(run_id="t", planned=len(plan), already_committed=0, to_generate=len(plan))
    scheduler = ShardScheduler(plan, pools, runtime, accounting, batch_size=4, max_retries=0, write_concurrency=1,
                               write_cpus=0.25, committed=0, on_commit=lambda n, m: peak.append(len(scheduler.active)))
    scheduler.run(deque((i, None) for i in range(plan.num_shards)))
    assert len(runtime.written) == 100
    # One batch a shard, two actors of two call slots each, filled twice over, plus one writing.
    assert max(peak) <= scheduler.max_active == 2 * 2 * (1 + 1) + 1

    def broken_write(work):
        return Ref(error=OSError("disk full"))

    runtime.write = broken_write
    scheduler = ShardScheduler(plan, pools, runtime, accounting, batch_size=4, max_retries=0, write_concurrency=1,
                               write_cpus=0.25, committed=7, on_commit=lambda n, m: None)
    with pytest.raises(OutputError, match=r"writing shard 00000 failed: OSError: disk full\. The 7 shards"):
        scheduler.run(deque([(0, None)]))


class HungPool(FakePool):
    """Accepts calls that never finish, like an actor whose node was lost; `alive`: whether Ray
    still reports the actor's node alive (a slow actor) or not (a lost one)."""

    def __init__(self, name, alive):
        super().__init__(name, add(name))
        self.alive = alive

    def submit(self, payload, attempt=0):
        self.in_flight += 1
        hung = Ref()
        hung.hung = True
        return hung, hung, object()

    def live_actors(self):
        return 1 if self.alive else 0


@pytest.mark.parametrize("alive", [False, True])
def test_a_stage_that_lost_every_actor_fails_the_run_after_the_timeout_but_a_slow_one_does_not(alive):
    plan = plan_of()
    pools = [FakePool("denoise", first), HungPool("decode", alive)]
    accounting = RunAccounting(run_id="t", planned=len(plan), already_committed=0, to_generate=len(plan))
    scheduler = ShardScheduler(
        plan, pools, FakeRuntime(), accounting, batch_size=3, max_retries=2, write_concurrency=2, write_cpus=0.25,
        committed=0, on_commit=lambda name, marker: None, stall_timeout_s=0.3,
    )
    stopper = threading.Timer(1.5, scheduler.stop)  # the slow stage's run ends only when stopped
    stopper.start()
    try:
        if alive:
            scheduler.run(deque((i, None) for i in range(plan.num_shards)))
        else:
            with pytest.raises(StageStalled, match=r"stage 'decode' has had work and no live actor for 0.3 s.*"
                                                   r"num_cpus=0, num_gpus=0.*0 shards committed are intact"):
                scheduler.run(deque((i, None) for i in range(plan.num_shards)))
    finally:
        stopper.cancel()
    assert pools[0].calls  # the first stage ran: the chain was stuck at its second
