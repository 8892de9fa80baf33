"""`latentmill report` in a terminal: a narrow summary first, then a per-stage table that fits
100 columns (`full`: every column, as report.md has them). The job report (pipelines/observe/report.py)
is the only input; words for the items come from its `units` (Pipeline.units)."""

from __future__ import annotations

import textwrap

from pipelines.observe.report import DEFAULT_UNITS

WIDTH = 100


def _num(value, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:,.{digits}f}"


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.0f}%"


def table(headers: list[str], rows: list[list[str]]) -> list[str]:
    """Plain columns, one space apart: the first left-aligned, the others right-aligned."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]

    def line(cells: list[str]) -> str:
        return " ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    return [line(headers), line(["-" * w for w in widths]), *(line(r) for r in rows)]


def _cost_line(report: dict, many: str) -> str:
    cost = report["totals"]["cost"]
    if not cost:
        return "not priced: add `cost: {gpu_hour: ..., cpu_hour: ...}` to the spec"
    if cost.get("total") is None:
        return cost.get("note", "-")
    per = cost.get("per_1000_images")
    return f"{cost['total']:.4f} {cost['currency']}" + (f"; {per:.4f} {cost['currency']} per 1,000 {many}" if per else "")


def _bottleneck_line(report: dict, many: str) -> str:
    b = report.get("bottleneck")
    if not b:
        return "unknown (no stage finished a batch yet)"
    return f"{b['stage']}: {b['why']}".replace("items/s", f"{many}/s")


def _problems_line(report: dict) -> str:
    failed = report.get("failed_samples", 0)
    parts = [f"{failed:,} failed"]
    if report["status"] == "complete":  # the rest of the plan is what a stage rejected as bad input
        parts.append(f"{max(0, report['planned'] - report['committed'] - failed):,} rejected")
    quality = report.get("quality")
    if quality is not None:
        parts.append(f"{len(quality['flagged'])} shards flagged by the quality monitor")
    return ", ".join(parts) + ("; `latentmill verify` lists them" if failed else "")


def _gpu_line(report: dict) -> str | None:
    """NVML figures per stage (SM util, peak memory, power), or "no GPU"; None for reports made before telemetry."""
    gpu = report.get("gpu")
    if not gpu:
        return None
    parts = [f"{name} SM {_num(g['sm_util_pct'], 0)}% ({_num(g['sm_util_busy_pct'], 0)}% busy), "
             f"peak {_num(g['memory_peak_mb'], 0)} MB, {_num(g['power_w'], 0)} W"
             for name, f in gpu.items() if (g := f.get("gpu"))]
    return "; ".join(parts) if parts else "no GPU (no actor had an NVIDIA GPU that NVML could read)"


def summary(report: dict) -> list[str]:
    units = report.get("units") or DEFAULT_UNITS
    many = units["plural"]
    t = report["totals"]
    runs = t["runs"]
    rows = [
        ("status", f"{report['status']}: {report['committed']:,}/{report['planned']:,} {many} committed "
                   f"({report['committed_shards']}/{report['planned_shards']} shards, {runs} run{'s' * (runs != 1)})"
         + (f"; ETA {report['eta_s']:.0f} s" if report.get("eta_s") is not None else "")),
        ("wall time", f"{_num(t['wall_s'], 1)} s"),
        ("throughput", f"{_num(t['images_per_s'], 3)} {many}/s" + "".join(
            f", {_num(f['per_s'], 1)} {name}/s" for name, f in (report.get("per_item") or {}).items())),
        ("bottleneck", _bottleneck_line(report, many)),
        ("cost", _cost_line(report, many)),
        ("resources", f"{t['gpu_hours']:.4f} GPU-hours, {t['cpu_hours']:.4f} CPU-hours"),
        ("GPUs", _gpu_line(report)),
        ("problems", _problems_line(report)),
        ("weights", report.get("weights")),  # random:* models: the images are noise
    ]
    lines = [f"latentmill report: {report['job']} ({report['output']})"]
    for name, text in rows:
        if text is None:
            continue
        lines += textwrap.wrap(text, WIDTH, initial_indent=f"  {name:<11} ", subsequent_indent=" " * 14,
                               break_on_hyphens=False)
    return lines


def stage_rows(report: dict) -> list[str]:
    headers = ["stage", "items", "/s", "capacity/s", "util", "busy s", "waiting s", "backlog s", "actors",
               "CPU-s/item", "GPU-s/item"]
    rows = []
    for name, s in report["stages"].items():
        rows.append([name, _num(s["items_out"]), _num(s["items_per_s"]), _num(s["capacity_items_per_s"]),
                     _pct(s["utilisation"]), _num(s["busy_s"], 1), _num(s["waiting_for_input_s"], 1),
                     _num(s["input_backlog_s"], 1), _num(s["actors"]["mean"], 1), _num(s["cpu_s_per_item"], 3),
                     _num(s["gpu_s_per_item"], 3)])
    return table(headers, rows)


def full_stage_rows(report: dict) -> list[str]:
    headers = ["stage", "items in", "items out", "batches", "items/s", "busy s", "idle s", "util", "capacity/s",
               "batch s mean/p50/p95", "latency s p50/p95", "waiting s", "backlog s", "backpressured s",
               "actors min-max (mean)", "GPU-s/item", "CPU-s/item"]
    rows = []
    for name, s in report["stages"].items():
        bs, lat, act = s["batch_s"], s["latency_s"], s["actors"]
        rows.append([name, _num(s["items_in"]), _num(s["items_out"]), _num(s["batches"]), _num(s["items_per_s"]),
                     _num(s["busy_s"], 1), _num(s["idle_s"], 1), _pct(s["utilisation"]),
                     _num(s["capacity_items_per_s"]),
                     f"{_num(bs['mean'], 3)}/{_num(bs['p50'], 3)}/{_num(bs['p95'], 3)}",
                     f"{_num(lat['p50'], 3)}/{_num(lat['p95'], 3)}", _num(s["waiting_for_input_s"], 1),
                     _num(s["input_backlog_s"], 1), _num(s["backpressured_s"], 1),
                     f"{act['min']}-{act['max']} ({_num(act['mean'])})", _num(s["gpu_s_per_item"], 4),
                     _num(s["cpu_s_per_item"], 4)])
    return table(headers, rows)


def render_terminal(report: dict, full: bool = False) -> str:
    lines = summary(report) + [""]
    lines += full_stage_rows(report) if full else stage_rows(report)
    legend = ("/s: items per second of wall time; capacity/s: what a stage could do with its actors if never "
              "starved (the bottleneck has the lowest); waiting s: idle, nothing queued; backlog s: work queued, "
              "no free actor. More: report.md and report.png next to the data" + ("." if full else ", --full, --json."))
    lines += [""] + textwrap.wrap(legend, WIDTH)
    return "\n".join(lines)
