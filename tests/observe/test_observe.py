"""The observability room knows no kind: stage order from the Pipeline, ETA from a smoothed rate,
no stage or kind named in its code (pipelines/observe/)."""

from __future__ import annotations

import ast
import pathlib
import re

import pytest

from pipelines.observe.accounting import RunAccounting, StageLoad
from pipelines.observe.eta import smoothed_rate
from pipelines.observe.run_report import run_report
from tests.conftest import REPO

OBSERVE = pathlib.Path(REPO) / "pipelines" / "observe"
KIND_WORDS = re.compile(r"\b(denoise|decode|video|encode|clips?|images?)\b", re.IGNORECASE)


def _load(queued: int, free: int) -> StageLoad:
    return StageLoad(actors=1, reserved=1, queued=queued, free_slots=free, idle_actors=0, cpus_per_actor=1,
                     gpus_per_actor=0)


def test_backpressure_is_credited_by_the_pipelines_stage_order_not_by_name():
    # "zeta" comes first in this chain although no list of known names has it: the stage after it is
    # full with work queued, so zeta (not "alpha") is the one held back.
    acc = RunAccounting(run_id="r", planned=8, already_committed=0, to_generate=8,
                        stage_names=("zeta", "alpha", "write"))
    loads = {"alpha": _load(queued=3, free=0), "zeta": _load(queued=0, free=1), "write": _load(0, 1)}
    acc.observe(loads)
    acc._last_observe -= 2.0  # two seconds pass in this state
    acc.observe(loads)
    report = run_report(acc)
    assert list(report["stages"]) == ["zeta", "alpha", "write"] == report["stage_names"]
    assert report["stages"]["zeta"]["backpressured_s"] == pytest.approx(2.0, abs=0.1)
    assert report["stages"]["alpha"]["backpressured_s"] == 0


def _timeline(rates: list[tuple[float, float]]) -> list[dict]:
    """Points every second; `rates`: (seconds, items/s) pieces of the last stage's rate."""
    points, t, n = [{"t": 0.0, "items": {"last": 0}}], 0.0, 0.0
    for seconds, rate in rates:
        for _ in range(int(seconds)):
            t, n = t + 1, n + rate
            points.append({"t": t, "items": {"last": int(n)}})
    return points


def test_the_rate_ignores_warm_up_and_does_not_swing_on_lumpy_batches():
    # 40 s of model loading, then batches of 8 every 2 s (4/s) landing on alternate points.
    lumpy = _timeline([(40, 0.0)])
    for i in range(60):
        lumpy.append({"t": 41.0 + i, "items": {"last": 8 * (i // 2 + 1)}})
    rates = [smoothed_rate(lumpy[: 41 + k], "last") for k in range(10, 60)]
    assert all(3.0 < r < 5.5 for r in rates), rates  # warm-up left out; no swing with the lumps
    assert smoothed_rate(_timeline([(40, 0.0)]), "last") is None  # nothing finished: no rate yet


def test_the_rate_follows_a_changed_rate_within_minutes():
    points = _timeline([(120, 10.0), (240, 2.0)])
    assert smoothed_rate(points, "last") == pytest.approx(2.0, rel=0.15)


def _strings_outside_docstrings(tree: ast.AST) -> list[str]:
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef)) and node.body
                  and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    return [node.value for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings]


def test_no_stage_or_kind_is_named_in_the_observability_code():
    for path in sorted(OBSERVE.glob("*.py")):
        tree = ast.parse(path.read_text())
        named = [s for s in _strings_outside_docstrings(tree) if KIND_WORDS.search(s)]
        assert not named, f"{path.name} names stages or kinds: {named}"


def test_a_stage_that_has_seen_every_item_shows_all_not_a_zero_rate():
    from pipelines.observe.progress import plain_lines, snapshot

    acc = RunAccounting(run_id="r", planned=8, already_committed=0, to_generate=8, stage_names=("read", "work", "write"))
    loads = {name: _load(0, 1) for name in ("read", "work", "write")}
    acc.observe(loads)
    acc.record("read", items=8, busy_s=0.1, started_at=0.0)
    acc._last_observe -= 3.0
    acc.observe(loads)
    lines = plain_lines(snapshot(acc), "j")
    assert any(line.split()[:4] == ["read", "8", "done", "all/s"] for line in lines), lines
    assert any(line.split()[:4] == ["work", "0", "done", "-/s"] for line in lines), lines
