"""report.png: throughput over time, one small panel per stage, and utilisation as one strip per stage.

Drawn from the runs' timelines (cumulative items and busy seconds per stage, sampled by the
accounting) with matplotlib's Agg backend: no display needed. Reading it:
  - the top panel is the job's rate: items the last stage finished per second (the kind's unit);
  - one panel per stage in chain order, each on its own y axis, so a 300/s write burst does not
    flatten a 3/s stage to a line at zero; rates are averaged over a window (SMOOTH_FRACTION of the
    runs' time, at least SMOOTH_MIN_S) so batch-sized lumps do not hide the trend;
  - each run's start-up (Ray, actors loading their models: before the first batch) is shaded and
    labelled; runs of a resumed job follow each other with a marker, no gap between them;
  - the bottom strip shows each stage's utilisation (busy / ready actor time) per interval, 0-100 %.
A stage's colour is its position in the chain, never its name.
"""

from __future__ import annotations

import io

COLOURS = ("tab:blue", "tab:orange", "tab:purple", "tab:red", "tab:brown", "tab:olive", "tab:cyan", "tab:green")
SMOOTH_FRACTION = 0.03  # moving-average window, as a fraction of all runs' time ...
SMOOTH_MIN_S = 5.0  # ... and at least this long: a few batches even in a one-minute run


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
            # Not capped here: a batch's busy time lands in the interval it ended in, and the
            # moving average spreads it back; capped per interval, long batches would read idle.
            s["util"].append(busy / (actors * span) if actors else None)
    if len(timeline) > 1:
        for s in series.values():
            s["t"].append(offset + timeline[-1]["t"])
            s["rate"].append(s["rate"][-1])
            s["util"].append(s["util"][-1])
    return series


def smoothed(t: list[float], rate: list[float], window_s: float) -> list[float]:
    """Each point's rate averaged (time-weighted) over the `window_s` seconds that end at it."""
    out = []
    for i, end in enumerate(t):
        items = seconds = 0.0
        j = i
        while j > 0 and end - t[j - 1] <= window_s:
            span = t[j] - t[j - 1]
            items, seconds = items + rate[j - 1] * span, seconds + span
            j -= 1
        out.append(items / seconds if seconds > 0 else rate[i])
    return out


def _stream_start(run: dict) -> float:
    """Timeline seconds at which the run's first batch streamed (its start-up before)."""
    if run.get("stream_start_t") is not None:
        return run["stream_start_t"]
    timeline = run.get("timeline") or []
    return timeline[0]["t"] if timeline else 0.0


def render_chart(report: dict) -> bytes | None:
    """PNG bytes, or None when no run has a timeline yet (or matplotlib is missing)."""
    try:
        # lazy: keeps matplotlib out of processes that never call this
        import matplotlib

        matplotlib.use("Agg")
        # lazy: keeps matplotlib out of processes that never call this
        from matplotlib.figure import Figure
    except ImportError:
        return None
    runs = [r for r in report.get("runs", []) if len(r.get("timeline") or []) > 1]
    if not runs:
        return None
    order = list(report.get("stage_names") or [])
    order += [n for r in runs for n in r["timeline"][-1]["items"] if n not in order]
    order = [n for n in order if any(n in r["timeline"][-1]["items"] for r in runs)]
    figure = Figure(figsize=(10, 1.9 * (len(order) + 1) + 1.4), dpi=100, layout="constrained")
    axes = figure.subplots(len(order) + 2, 1, sharex=True,
                           gridspec_kw={"height_ratios": [1.3] + [1] * len(order) + [0.25 * len(order) + 0.3]})
    total_ax, stage_axes, util_ax = axes[0], axes[1:-1], axes[-1]
    _draw_runs(runs, order, total_ax, stage_axes, util_ax, report)
    _titles(figure, report, runs)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def _draw_runs(runs, order, total_ax, stage_axes, util_ax, report) -> None:
    span = sum(r["timeline"][-1]["t"] for r in runs)
    window = max(SMOOTH_FRACTION * span, SMOOTH_MIN_S)
    last = [n for n in order if n != "write"][-1:] or order[-1:]
    units = report.get("units") or {}
    many = units.get("plural", "items")
    offset = 0.0
    strips: dict[str, list] = {n: [] for n in order}
    for i, run in enumerate(runs):
        series = stage_series(run["timeline"], offset)
        start = offset + _stream_start(run)
        for ax in (total_ax, *stage_axes, util_ax):
            ax.axvspan(offset, start, color="0.9", zorder=0)
            if i:
                ax.axvline(offset, color="0.3", linestyle="--", linewidth=1)
        total_ax.text((offset + start) / 2, 0.5, f"start-up\n{start - offset:.0f} s",
                      transform=total_ax.get_xaxis_transform(), ha="center", va="center", fontsize=8, color="0.35")
        if i:
            total_ax.text(offset, 0.97, f" run {i + 1} (resumed)", transform=total_ax.get_xaxis_transform(),
                          fontsize=8, color="0.3", va="top")
        for name, ax in zip(order, stage_axes):
            s = series.get(name)
            if s is None:
                continue
            colour = COLOURS[order.index(name) % len(COLOURS)]
            ax.plot(s["t"], smoothed(s["t"], s["rate"], window), color=colour, linewidth=1.4, drawstyle="steps-post")
            # Utilisation over the same window: per interval it only says whether a batch ended in it.
            util = smoothed(s["t"], [u or 0.0 for u in s["util"]], window)
            strips[name] += [(a, b, min(1.0, u) if raw is not None else None)
                             for a, b, u, raw in zip(s["t"], s["t"][1:], util, s["util"])]
            if name in last:
                total_ax.plot(s["t"], smoothed(s["t"], s["rate"], window), color="black", linewidth=1.6,
                              drawstyle="steps-post")
        offset += run["timeline"][-1]["t"]
    for name, ax in zip(order, stage_axes):
        ax.set_ylabel(f"{name}\n{many}/s", fontsize=9)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    total_ax.set_ylabel(f"job\n{many}/s", fontsize=9)
    total_ax.set_ylim(bottom=0)
    total_ax.grid(alpha=0.3)
    total_ax.set_title(f"{many} finished per second (last stage; moving average over {window:.0f} s); "
                       "shaded: start-up", fontsize=9, loc="left")
    _draw_strips(util_ax, order, strips, offset)


def _draw_strips(ax, order, strips, end) -> None:
    """One row per stage: utilisation per interval as a colour (white 0 %, dark 100 %)."""
    # lazy: keeps matplotlib out of processes that never call this
    from matplotlib import colormaps

    cmap = colormaps["Greens"]
    for row, name in enumerate(order):
        for start, stop, util in strips[name]:
            if util is not None:
                ax.broken_barh([(start, stop - start)], (row - 0.4, 0.8), facecolors=cmap(0.1 + 0.9 * util),
                               linewidth=0)
    ax.set_yticks(range(len(order)), order, fontsize=8)
    ax.set_ylim(len(order) - 0.5, -0.5)
    ax.set_xlim(0, end)
    ax.set_xlabel("seconds since the first run started (runs one after another)")
    ax.set_title("utilisation, same moving average (white 0 %, dark green 100 %)", fontsize=9, loc="left")


def _titles(figure, report: dict, runs: list) -> None:
    bottleneck = report.get("bottleneck") or {}
    figure.suptitle(
        f"{report.get('job')}: {report['committed']:,}/{report['planned']:,} committed"
        + (f", bottleneck: {bottleneck['stage']}" if bottleneck else "")
        + (f" ({len(runs)} runs)" if len(runs) > 1 else ""),
        fontsize=11,
    )
