"""report.png: per-stage throughput (items/s) and utilisation over time, runs side by side.

Drawn from the runs' timelines (cumulative items and busy seconds per stage, sampled by the
accounting) with matplotlib's Agg backend: no display needed.
"""

from __future__ import annotations

import io

# A stage's colour is its position in the chain (report["stage_names"]), never its name.
COLOURS = ("tab:blue", "tab:orange", "tab:purple", "tab:red", "tab:brown", "tab:olive", "tab:cyan")


def stage_series(timeline: list[dict], offset: float = 0.0) -> dict[str, dict[str, list]]:
    """stage -> {"t", "rate", "util"}: per-interval items/s and busy/(actors x time) from cumulative points.

    Each interval's value is keyed at its start, and the last one repeated at the end: draw with steps-post."""
    series: dict[str, dict[str, list]] = {}
    for before, after in zip(timeline, timeline[1:]):
        span = after["t"] - before["t"]
        if span <= 0:
            continue
        for name, items in after["items"].items():
            s = series.setdefault(name, {"t": [], "rate": [], "util": []})
            s["t"].append(offset + before["t"])
            s["rate"].append((items - before["items"].get(name, 0)) / span)
            actors = before.get("actors", {}).get(name, 0)
            busy = after["busy_s"].get(name, 0.0) - before["busy_s"].get(name, 0.0)
            s["util"].append(min(1.0, busy / (actors * span)) if actors else None)
    if len(timeline) > 1:
        for s in series.values():
            s["t"].append(offset + timeline[-1]["t"])
            s["rate"].append(s["rate"][-1])
            s["util"].append(s["util"][-1])
    return series


def render_chart(report: dict) -> bytes | None:
    """PNG bytes, or None when no run has a timeline yet (or matplotlib is missing)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib.figure import Figure
    except ImportError:
        return None
    runs = [r for r in report.get("runs", []) if len(r.get("timeline") or []) > 1]
    if not runs:
        return None
    figure = Figure(figsize=(10, 6), dpi=100)
    rate_ax, util_ax = figure.subplots(2, 1, sharex=True)
    offset = 0.0
    labelled = set()
    for i, run in enumerate(runs):
        series = stage_series(run["timeline"], offset)
        order = list(report.get("stage_names") or [])
        order += [n for n in series if n not in order]
        for name in sorted(series, key=order.index):
            s = series[name]
            label = name if name not in labelled else None
            labelled.add(name)
            colour = COLOURS[order.index(name) % len(COLOURS)]
            rate_ax.plot(s["t"], s["rate"], color=colour, label=label, linewidth=1.2, drawstyle="steps-post")
            points = [(t, u) for t, u in zip(s["t"], s["util"]) if u is not None]
            if points:
                util_ax.plot([t for t, _ in points], [100 * u for _, u in points], color=colour, linewidth=1.2,
                             drawstyle="steps-post")
        if i:
            for ax in (rate_ax, util_ax):
                ax.axvline(offset, color="grey", linestyle="--", linewidth=0.8)
        offset += run["timeline"][-1]["t"]
    bottleneck = report.get("bottleneck") or {}
    figure.suptitle(
        f"{report.get('job')}: {report['committed']:,}/{report['planned']:,} committed"
        + (f", bottleneck: {bottleneck['stage']}" if bottleneck else "")
        + (f" ({len(runs)} runs, dashed lines between)" if len(runs) > 1 else "")
    )
    rate_ax.set_ylabel("items/s")
    rate_ax.legend(loc="upper right")
    rate_ax.grid(alpha=0.3)
    util_ax.set_ylabel("utilisation %")
    util_ax.set_ylim(0, 105)
    util_ax.set_xlabel("seconds since the run started (runs one after another)")
    util_ax.grid(alpha=0.3)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()
