"""`latentmill bench scheduler --memory`: the driver's peak RSS over a dry run of the scheduler's
bookkeeping (stages that finish at once in the driver's process, no Ray) at 1e5 and 1e7 samples."""

from __future__ import annotations

import os
import resource
import shutil
import tempfile
import time

from jobs.bench.common import WRITE_SLOTS, run_in_child
from pipelines.inprocess import Done, InProcessPool
from pipelines.observe.accounting import RunAccounting
from pipelines.observe.run_report import run_report
from pipelines.scheduler import ShardQueue, ShardScheduler


def instant_stage(last: bool):
    """A stage function for the dry run: the last one returns (empty) files per sample."""
    def run(batch: dict) -> dict:
        keys = batch["keys"]
        return {"keys": keys, "files": [{"png": b""}] * len(keys)} if last else {"keys": keys}

    return run


class InstantRuntime:
    total_cpus = 2.0

    def wait(self, refs, timeout):
        return refs

    def get(self, ref):
        return ref.value

    def write(self, work):
        keys = sum(len(r.value["keys"]) for r in work.outputs)
        return Done({"shard": work.shard.name, "samples": keys, "failed": 0, "failed_keys": [], "rejected": 0,
                     "tar_bytes": 0, "tar_sha256": "0" * 64, "manifest_sha256": "0" * 64, "write_seconds": 0.01})


def memory_dry_run(samples: int, batch_size: int, shard: int) -> dict:
    """The scheduler, accounting and shard index over `samples` with instant stages, the index
    written to index.json (in a temporary folder) as the runner writes it. Returns the peak RSS and
    what it took, with the modules a real driver holds (Ray, pyarrow, the runner) loaded, so the
    baseline is a driver's."""
    import pipelines.runner  # noqa: F401  (Ray, pyarrow, the sinks: what a driver process has loaded)
    from pipelines.plan import build_plan
    from pipelines.sinks.layout import OutputLayout
    from pipelines.sinks.shard_index import ShardIndex

    class Reports:  # the report is rebuilt as often as the run report writer would (every 10 s or commit)
        def update(self, acc):
            if acc.written % (shard * 50) == 0:
                run_report(acc)

        def finish(self, acc):
            pass

    plan = build_plan(["a prompt"], images_per_prompt=1, num_images=samples, seed=0, samples_per_shard=shard)
    accounting = RunAccounting(run_id="dry", planned=samples, already_committed=0, to_generate=samples,
                               listeners=[Reports()])
    layout = OutputLayout(tempfile.mkdtemp(prefix="latentmill-memory-"))
    index = ShardIndex(plan.num_shards)

    def on_commit(name: str, marker: dict) -> None:  # as the runner's
        index.add(name, marker)
        index.write_if_due(layout)

    pools = [InProcessPool("denoise", instant_stage(False), 4), InProcessPool("decode", instant_stage(True), 4)]
    scheduler = ShardScheduler(plan, pools, InstantRuntime(), accounting, batch_size=batch_size, max_retries=0,
                               write_concurrency=WRITE_SLOTS, write_cpus=0.0, committed=0,
                               on_commit=on_commit)
    started, cpu = time.perf_counter(), time.process_time()
    scheduler.run(ShardQueue(range(plan.num_shards)))
    report_started = time.perf_counter()
    accounting.finish([])
    run_report(accounting)
    index.write(layout)
    index_bytes = os.path.getsize(layout.path("index.json"))
    shutil.rmtree(layout.root)
    return {"samples": samples, "committed": accounting.written, "shards": index.committed,
            "index_writes": index.writes, "index_mb": index_bytes / 2**20,
            "wall_s": time.perf_counter() - started,
            "cpu_s": time.process_time() - cpu, "final_report_s": time.perf_counter() - report_started,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def memory_table(profile: dict, sizes: list[int]) -> str:
    """Peak RSS of dry runs, each in a fresh process."""
    first = next(iter(profile["stages"].values()))
    lines = ["| samples | shards | index.json writes | index.json MB | wall s | driver CPU s | final report s "
             "| peak RSS MB |", "|---|---|---|---|---|---|---|---|"]
    peaks = []
    for n in sizes:
        job = {"memory": {"samples": n, "batch_size": first["batch_size"], "shard": profile["samples_per_shard"]}}
        r = run_in_child({"name": "memory", **job})
        peaks.append(r["peak_rss_mb"])
        lines.append(f"| {n:,} | {r['shards']:,} | {r['index_writes']} | {r['index_mb']:.1f} | {r['wall_s']:.1f} "
                     f"| {r['cpu_s']:.1f} | {r['final_report_s']:.3f} | {r['peak_rss_mb']:.1f} |")
    lines.append(f"\npeak RSS {sizes[-1]:,} / {sizes[0]:,} samples: {peaks[-1] / peaks[0]:.3f}x "
                 f"(+{peaks[-1] - peaks[0]:.1f} MB)")
    return "\n".join(lines)
