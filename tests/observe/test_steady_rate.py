"""A finished run's summary line gives both rates, labelled: overall (committed over the whole wall
time, start-up included) and steady (the progress bar's smoothed rate, pipelines/observe/eta.py)."""

from __future__ import annotations

import time

import pytest

from jobs.cli.run import run_summary
from pipelines.observe.accounting import RunAccounting
from pipelines.observe.eta import run_rate
from pipelines.observe.run_report import run_report


def _finished_run() -> RunAccounting:
    """40 s of start-up with nothing finished, then 4 items/s for 20 s: 80 items in 60 s."""
    acc = RunAccounting(run_id="r", planned=80, already_committed=0, to_generate=80, stage_names=("work", "write"),
                        units={"singular": "image", "plural": "images", "verb": "generated"})
    acc.timeline = [{"t": float(t), "items": {"work": max(0, 4 * (t - 40))}} for t in range(0, 60)]
    acc.record("work", items=80, busy_s=20.0, started_at=0.0)
    acc.committed(80)
    acc._clock = time.monotonic() - 60.0
    acc.status = "finished"
    acc._ended = acc._clock + 60.0
    return acc


def test_the_run_report_carries_the_bars_steady_rate():
    acc = _finished_run()
    report = run_report(acc)
    assert report["samples_per_s"] == pytest.approx(80 / 60, abs=1e-3)
    assert report["steady_per_s"] == pytest.approx(run_rate(acc), abs=1e-3) == pytest.approx(4.0, abs=1e-3)


def test_the_summary_line_says_overall_and_steady():
    line = run_summary("qs", run_report(_finished_run()), "/out")
    assert line.startswith("qs: 80 images generated in 60.0 s (1.33/s overall, 4.00/s steady); ")
