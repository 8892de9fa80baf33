"""The one steady-state rule of the scheduler benchmark (jobs/bench/steady.py), on records whose
answer is known: a window above the ideal is rejected and reported, start-up is apart from it."""

from __future__ import annotations

from jobs.bench.steady import SinkRecord, steady_state, summary


def test_a_window_above_the_ideal_is_rejected_and_reported_not_clipped():
    # The Ray Data run at 32 GPUs (ideal 193.3/s): 376 items, nothing for 85 s, then about
    # 5,000 items in 13 s, in files of 32 rows.
    groups = [(10 + k, 32) for k in range(12)] + [(107 + 13 * k / 156, 32) for k in range(157)]
    result = steady_state(SinkRecord.from_groups(0.0, groups), ideal_items_per_s=193.3)
    assert result["items_per_s"] is None
    assert result["measured_items_per_s"] > 1.9 * 193.3  # 5,024 items in 13 s: 386/s
    assert result["rejected"].startswith(f"window rate {result['measured_items_per_s']:.1f} items/s exceeds "
                                         "the ideal 193.3")


def test_a_window_at_the_ideal_in_bursts_is_kept_and_start_up_is_apart():
    # Shards of 32 committed in waves of 3 every 0.48 s: 200 items/s, from 30 s after the start.
    groups = [(30 + 0.48 * wave + 0.01 * k, 32) for wave in range(40) for k in range(3)]
    result = steady_state(SinkRecord.from_groups(0.0, groups), ideal_items_per_s=200)
    assert result["rejected"] is None and abs(result["items_per_s"] / 200 - 1) < 0.03
    assert result["startup_s"] == 30 and result["window_items"] == 40 * 3 * 32 // 2
    assert result["whole_run_items_per_s"] < 100  # start-up counted there, not in the steady rate


def test_the_warm_up_and_the_drain_quarters_are_left_out():
    # Slow (10/s) first quarter and last quarter, 100/s in the middle half: the rule reads the middle.
    slow_start = [(0.1 * k, 1) for k in range(100)]
    middle = [(10 + 0.01 * k, 1) for k in range(200)]
    slow_end = [(12 + 0.1 * k, 1) for k in range(100)]
    result = steady_state(SinkRecord.from_groups(0.0, slow_start + middle + slow_end), ideal_items_per_s=100)
    assert result["rejected"] is None and abs(result["items_per_s"] / 100 - 1) < 0.01


def test_too_few_completions_or_none_are_reported():
    assert steady_state(SinkRecord.from_groups(0.0, [(5, 96), (6, 96)]), 50)["rejected"].startswith("2 distinct")
    assert steady_state(SinkRecord(0.0, ()), 50)["rejected"] == "no item reached the sink"


def test_summary_counts_rejected_runs_without_using_them():
    assert summary([3.0, None, 1.0, 2.0]) == {"median": 2.0, "min": 1.0, "max": 3.0, "runs": 4, "kept": 3}
    assert summary([None])["median"] is None
