"""What watches a run: the run report kept current on storage, live progress, and Ray metrics.

Each is a listener of pipelines.observe.accounting.RunAccounting: `update(acc)` after every driver-loop
turn (each decides how often it acts), `finish(acc)` once at the end, failed runs included.
"""

from __future__ import annotations

import sys
import time

from pipelines.observe.metrics import RayMetrics
from pipelines.observe.progress import LiveProgress
from pipelines.observe.quality import quality_summary
from pipelines.observe.report import write_job_report
from pipelines.observe.run_report import run_report


def run_listeners(layout, job_name: str, progress) -> list:
    """`progress`: True (a display of its own), False (none) or the caller's LiveProgress."""
    listeners = [RunReportWriter(layout), RayMetrics(job_name, quality=lambda: _quality(layout))]
    if progress:
        listeners.append(progress if isinstance(progress, LiveProgress) else LiveProgress(job_name))
    return listeners


def _quality(layout) -> dict | None:
    """The quality monitor's summary for the metrics export; a job without a monitor reads no manifest."""
    record = layout.read_job()
    return quality_summary(layout, record) if record else None


class RunReportWriter:
    """Keeps OUTPUT/runs/RUN_ID.json current while the run goes (so `latentmill report` works on a
    running job, and a killed run still leaves its accounting up to its last commit), then writes
    the job report (report.json, report.md, report.png) over all runs."""

    def __init__(self, layout, every_s: float = 10.0, min_gap_s: float = 2.0):
        self.layout = layout
        self.every_s, self.min_gap_s = every_s, min_gap_s
        self._last = float("-inf")
        self._written = -1

    def update(self, acc) -> None:
        now = time.monotonic()
        committed_more = acc.written != self._written
        if now - self._last >= self.every_s or (committed_more and now - self._last >= self.min_gap_s):
            self.layout.write_run_report(acc.run_id, run_report(acc))
            self._last, self._written = now, acc.written

    def finish(self, acc) -> None:
        try:
            self.layout.write_run_report(acc.run_id, run_report(acc))
        except Exception as exc:
            if acc.status != "failed":
                raise
            # The run is failing already (storage down?): say so, and let its own error through.
            print(f"warning: could not write the run report: {type(exc).__name__}: {exc}", file=sys.stderr)
            return
        try:
            write_job_report(self.layout)
        except Exception as exc:  # the data and the run report are written; the summary can be redone
            print(
                f"warning: could not write the job report ({type(exc).__name__}: {exc}); "
                f"`latentmill report {self.layout.url}` rebuilds it",
                file=sys.stderr,
            )
