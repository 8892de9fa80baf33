"""Export the run's accounting through Ray's metrics API (ray.util.metrics).

Ray serves them with its other metrics to Prometheus (prefixed `ray_`) and shows them in the
dashboard's Metrics view; every series is tagged with the job name and, per stage, the stage.
Needs a Ray started with its metrics agent (`ray[default]`, dashboard on); without one the
calls are cheap no-ops on Ray's side.
"""

from __future__ import annotations

import sys
import time

from pipelines.observe.eta import eta_s

STAGE_TAGS = ("job", "stage")
JOB_TAGS = ("job",)
LATENCY_BOUNDARIES = [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300]


def make_metrics(factory=None) -> dict:
    """name -> metric object. `factory` (tests) maps "Counter"/"Gauge"/"Histogram" to classes."""
    if factory is None:
        # lazy: keeps ray out of processes that never call this
        from ray.util import metrics as ray_metrics

        factory = {"Counter": ray_metrics.Counter, "Gauge": ray_metrics.Gauge, "Histogram": ray_metrics.Histogram}
    counter, gauge, histogram = factory["Counter"], factory["Gauge"], factory["Histogram"]
    return {
        "items": counter("latentmill_stage_items", "items a stage finished", tag_keys=STAGE_TAGS),
        "batches": counter("latentmill_stage_batches", "batches a stage finished", tag_keys=STAGE_TAGS),
        "busy": counter("latentmill_stage_busy_seconds", "seconds a stage's code ran, over actors", tag_keys=STAGE_TAGS),
        "failed": counter("latentmill_stage_failed_batches", "batches that raised", tag_keys=STAGE_TAGS),
        "latency": histogram(
            "latentmill_stage_batch_latency_seconds",
            "batch submission to result",
            boundaries=LATENCY_BOUNDARIES,
            tag_keys=STAGE_TAGS,
        ),
        "actors": gauge("latentmill_stage_actors", "ready actors (write: slots)", tag_keys=STAGE_TAGS),
        "queued": gauge("latentmill_stage_queued_batches", "batches waiting for a free slot", tag_keys=STAGE_TAGS),
        "utilisation": gauge("latentmill_stage_utilisation", "busy / ready actor time so far", tag_keys=STAGE_TAGS),
        "committed": counter("latentmill_samples_committed", "samples committed to storage", tag_keys=JOB_TAGS),
        "images_per_s": gauge("latentmill_images_per_second", "committed samples per second so far", tag_keys=JOB_TAGS),
        "eta": gauge("latentmill_eta_seconds", "estimated seconds left", tag_keys=JOB_TAGS),
        # Set at the end of a run of a job with a quality monitor (pipelines/observe/quality.py), over its committed shards.
        "quality_flagged": gauge("latentmill_quality_flagged_shards", "shards below the quality monitor's thresholds",
                                 tag_keys=JOB_TAGS),
        "quality_psnr": gauge("latentmill_quality_psnr_db", "mean PSNR of the decoder vs the reference, monitored samples",
                              tag_keys=JOB_TAGS),
        "quality_ssim": gauge("latentmill_quality_ssim", "mean SSIM of the decoder vs the reference, monitored samples",
                              tag_keys=JOB_TAGS),
    }


class RayMetrics:
    """A RunAccounting listener that pushes deltas to Ray's metrics at most every `every_s`.

    `quality` (optional): returns the job's quality monitor summary (pipelines/observe/quality.py) or None;
    called once at the end of the run, since it reads every committed manifest.
    """

    def __init__(self, job: str, every_s: float = 1.0, factory=None, quality=None):
        self.job = job
        self.quality = quality
        self.every_s = every_s
        self._last = float("-inf")
        self._sent: dict[tuple, float] = {}
        try:
            self.metrics = make_metrics(factory)
        except Exception:  # no Ray metrics here (no Ray worker): accounting goes on without them
            self.metrics = None

    def update(self, acc) -> None:
        now = time.monotonic()
        if self.metrics is not None and now - self._last >= self.every_s:
            self._last = now
            self.push(acc)

    def finish(self, acc) -> None:
        if self.metrics is not None:
            self.push(acc)
            if self.quality is not None:
                try:
                    self.push_quality(self.quality())
                except Exception as exc:  # storage down at the end of a failing run: the run's own error matters
                    print(f"warning: quality metrics not exported: {type(exc).__name__}: {exc}", file=sys.stderr)

    def push_quality(self, summary: dict | None) -> None:
        if summary is None:
            return
        tags = {"job": self.job}
        self.metrics["quality_flagged"].set(len(summary["flagged"]), tags=tags)
        for name in ("psnr", "ssim"):
            if isinstance(summary[name], float):  # None: nothing monitored yet; "inf": no finite value to export
                self.metrics[f"quality_{name}"].set(summary[name], tags=tags)

    def _inc(self, metric: str, key: tuple, total: float, tags: dict) -> None:
        """Counters get what was added since the last push."""
        delta = total - self._sent.get((metric, *key), 0)
        if delta > 0:
            self.metrics[metric].inc(delta, tags=tags)
            self._sent[(metric, *key)] = total

    def push(self, acc) -> None:
        m = self.metrics
        job_tags = {"job": self.job}
        for name, stats in acc.stages.items():
            tags = {"job": self.job, "stage": name}
            self._inc("items", (name,), stats.items_out, tags)
            self._inc("batches", (name,), stats.batches, tags)
            self._inc("busy", (name,), stats.busy_s, tags)
            self._inc("failed", (name,), stats.failed_batches, tags)
            # Latencies recorded since the last push (the most recent ones, if more than the buffer holds).
            new = stats.latency.count - int(self._sent.get(("latency", name), 0))
            recent = stats.recent_latency_s
            for value in list(recent)[len(recent) - min(new, len(recent)):]:
                m["latency"].observe(value, tags=tags)
            self._sent[("latency", name)] = stats.latency.count
            load = acc.loads().get(name)
            m["actors"].set(load.actors if load else 0, tags=tags)
            m["queued"].set(load.queued if load else 0, tags=tags)
            if stats.actor_s > 0:
                m["utilisation"].set(stats.busy_s / stats.actor_s, tags=tags)
        self._inc("committed", (), acc.written, job_tags)
        elapsed = acc.elapsed()
        m["images_per_s"].set(acc.written / elapsed if elapsed > 0 else 0.0, tags=job_tags)
        eta = eta_s(acc) if acc.status == "running" else 0.0
        if eta is not None:
            m["eta"].set(eta, tags=job_tags)
