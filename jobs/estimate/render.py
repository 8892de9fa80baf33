"""The estimate in a terminal: a table of what each stage measured, then the projection in a few
labelled lines (the same words as `latentmill report`: capacity, bottleneck, cost). The estimate's
dict (jobs/estimate/job.py) is the only input; `--json` prints that dict instead."""

from __future__ import annotations

import textwrap

from pipelines.observe.progress import format_duration
from pipelines.observe.report_text import WIDTH, table

LABEL = 12  # width of the summary lines' labels


def render(estimate: dict) -> str:
    units, p = estimate["units"], estimate["projection"]
    cluster = estimate["cluster"]
    lines = [f"{estimate['job']}: estimate for {estimate['items']:,} {units['plural']} ({estimate['shards']:,} shards), "
             f"measured on {cluster['CPU']:g} CPUs, {cluster['GPU']:g} GPUs", "", *_stage_table(estimate), ""]
    many = units["plural"]
    summary = [
        ("bottleneck", f"{p['bottleneck']['stage']}: {p['bottleneck']['why']}"),
        ("throughput", f"{p['items_per_s']:.3g} {many}/s steady (write bound {_rate(p['write_bound_items_per_s'])} {many}/s)"),
        ("wall time", _wall_line(estimate["startup"], p, estimate["items"], many)),
        ("cost", _cost_line(p["cost"], many)),
        ("resources", f"{p['gpu_hours']:.4f} GPU-hours, {p['cpu_hours']:.4f} CPU-hours (allocated, loading included)"),
        ("auto split", _auto_line(p["auto"], many)),
    ]
    for label, text in summary:
        lines += textwrap.wrap(text, WIDTH, initial_indent=f"{label:<{LABEL}}", subsequent_indent=" " * LABEL)
    lines.append(f"nothing was written to {estimate['output_url']}; the write was timed in a temporary folder")
    return "\n".join(lines)


def _stage_table(estimate: dict) -> list[str]:
    one = estimate["units"]["singular"]
    actors = estimate["projection"]["actors"]
    capacity = estimate["projection"]["capacity_items_per_s"]
    rows = []
    for s in estimate["stages"]:
        m, w = s["measured"], s["warmup"]
        rows.append([s["name"], str(actors[s["name"]]) + (" slots" if s["name"] == "write" else ""), str(m["items"]),
                     f"{m['s']:.3f}", _seconds(m["s_per_item"]), _rate(capacity[s["name"]]), f"{w['s']:.3f}",
                     "-" if s["load_s"] is None else f"{s['load_s']:.1f}"])
    headers = ["stage", "actors", "batch", "s/batch", f"s/{one}", "capacity/s", "warm-up s/batch", "load s"]
    legend = (f"One measured batch per stage, all stages at the same time as in a run, after a warm-up batch "
              "through each in turn (an actor's first, timed but not projected from). "
              f"capacity/s: {estimate['units']['plural']} per second a stage does with its actors; load s: its "
              "slowest actor's model load.")
    return table(headers, rows) + textwrap.wrap(legend, WIDTH)


def _wall_line(startup: dict, p: dict, items: int, many: str) -> str:
    return (f"{format_duration(p['wall_s'])} ({p['wall_s']:.1f} s) = start-up {p['startup_s']:.1f} s "
            f"(Ray {startup['ray_s']:.1f} s, actors {startup['actors_s']:.1f} s) + fill {p['fill_s']:.1f} s "
            f"+ {items:,} {many} at {p['items_per_s']:.3g}/s ({p['stream_s'] - p['fill_s']:.1f} s)")


def _cost_line(cost: dict | None, many: str) -> str:
    if cost is None:
        return "not priced: add `cost: {gpu_hour: ..., cpu_hour: ...}` to the spec"
    per = cost.get("per_1000_images")
    return f"{cost['total']:.4f} {cost['currency']}" + (f"; {per:.4f} {cost['currency']} per 1,000 {many}" if per else "")


def _auto_line(auto: dict, many: str) -> str:
    if "split" not in auto:
        return f"not applicable: {auto['note']}"
    split = ", ".join(f"{name} {n}" for name, n in auto["split"].items())
    return (f"{split} of {auto['slots']} GPUs (what concurrency: auto chooses for these times): "
            f"{auto['items_per_s']:.3g} {many}/s, wall {format_duration(auto['wall_s'])}, bottleneck "
            f"{auto['bottleneck']['stage']}")


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _rate(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.3g}" if value < 1000 else f"{value:,.0f}"
