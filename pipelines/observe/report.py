"""The job report: every run's accounting (OUTPUT/runs/*.json) summed into one, next to the data.

    OUTPUT/report.json   totals, per-stage figures over all runs, one row per run, the bottleneck
    OUTPUT/report.md     the same, readable; its first lines name the bottleneck stage
    OUTPUT/report.png    per-stage throughput and utilisation over time (pipelines/observe/chart.py)

Rebuilt from the run reports at the end of every run and by `latentmill report OUTPUT`, which
also works while a job runs: a running run keeps its runs/RUN_ID.json current.
"""

from __future__ import annotations

import json
import posixpath
import time

from pipelines.errors import OutputConflict, OutputError
from pipelines.models.random_models import NOISE_NOTE, is_random_model
from pipelines.observe.accounting import percentiles_from_histogram
from pipelines.observe.chart import render_chart
from pipelines.observe.gpu_telemetry import stage_gpu_figures
from pipelines.observe.quality import monitor_cost, quality_summary
from pipelines.sinks.layout import OutputLayout
from pipelines.sinks.storage import read_json, write_atomic

RUNS_DIR = "runs"
REPORT_JSON, REPORT_MD, REPORT_PNG = "report.json", "report.md", "report.png"
# A run whose report says "running" but was not updated for this long was killed.
STALE_AFTER_S = 60.0

_SUMMED = (
    "items_in", "items_out", "batches", "failed_batches", "busy_s", "actor_s", "reserved_actor_s", "idle_s",
    "waiting_for_input_s", "input_backlog_s", "queued_batch_s", "backpressured_s", "gpu_s", "cpu_s", "observed_s",
)


def open_job_output(url: str, storage=None) -> OutputLayout:
    """The layout of a job output, or an OutputError that says why `url` is not one."""
    try:
        layout = OutputLayout(url, storage)
        record = layout.read_job()
    except OutputError:
        raise
    except Exception as exc:
        raise OutputError(f"{url!r} cannot be read as a job output: {type(exc).__name__}: {exc}") from None
    if record is None:
        what = "does not exist" if not layout.fs.exists(layout.root) else "has no latentmill.json"
        raise OutputConflict(
            f"{url!r} is not a latentmill job output: it {what}. Give the output.url of a job "
            "(the folder holding latentmill.json, index.json and shards/)"
        )
    return layout


def load_runs(layout: OutputLayout) -> list[dict]:
    directory = layout.path(RUNS_DIR)
    try:
        names = sorted(posixpath.basename(p) for p in layout.fs.ls(directory, detail=False, refresh=True))
    except FileNotFoundError:
        return []
    runs = [read_json(layout.fs, posixpath.join(directory, n)) for n in names if n.endswith(".json")]
    return sorted(runs, key=lambda r: r.get("started", ""))


def build_job_report(layout: OutputLayout, now: float | None = None) -> dict:
    now = time.time() if now is None else now
    record = layout.read_job() or {}
    index = layout.read_index()
    runs = [_run_status(run, now) for run in load_runs(layout)]
    wall = sum(run.get("wall_s", 0.0) for run in runs)
    order = stage_order(runs)
    stages = aggregate_stages([run.get("stages", {}) for run in runs], wall, order)
    units = job_units(runs)
    generated = sum(run.get("generated", 0) for run in runs)
    gpu_hours = sum(run.get("gpu_hours", 0.0) for run in runs)
    cpu_hours = sum(run.get("cpu_hours", 0.0) for run in runs)
    committed = index.get("samples", 0)
    planned = record.get("planned", 0)
    running = [run for run in runs if run["status"] == "running"]
    complete = len(index.get("shards", [])) == record.get("shards", -1)
    quality = quality_summary(layout, record, index)
    if quality is not None:
        quality["cost"] = monitor_cost(stages)
    return {
        "job": record.get("name"),
        "output": layout.url,
        "status": "running" if running else ("complete" if complete else "incomplete"),
        "planned": planned,
        "committed": committed,
        "failed_samples": index.get("failed", 0),
        "committed_shards": len(index.get("shards", [])),
        "planned_shards": record.get("shards"),
        "eta_s": running[-1].get("eta_s") if running else None,
        "bottleneck": bottleneck(stages),
        "totals": {
            "runs": len(runs),
            "wall_s": round(wall, 3),
            "generated": generated,
            "images_per_s": round(generated / wall, 3) if wall > 0 else None,
            "gpu_hours": round(gpu_hours, 8),
            "cpu_hours": round(cpu_hours, 8),
            "cost": job_cost(runs, committed),
        },
        "stage_names": order,
        "units": units,
        "per_item": per_item_throughput(units, generated, wall),
        "stages": stages,
        "quality": quality,
        "weights": weights_note(record),
        "gpu": stage_gpu_figures([actor for run in runs for actor in run.get("actors") or []]),
        "runs": [_run_row(run) for run in runs],
        "generated_at": round(now, 3),
    }


def weights_note(record: dict) -> str | None:
    """What a report says first when the model's weights are random: its outputs are noise."""
    reference = (record.get("spec") or {}).get("model", {}).get("reference", "")
    return f"model.reference {reference}: {NOISE_NOTE}" if is_random_model(reference) else None


def job_cost(runs: list[dict], committed: int) -> dict | None:
    """Each run's cost at its own prices, summed; per 1,000 images of the output (committed
    samples), not of the work done, which counts regenerated shards twice."""
    priced = [run["cost"] for run in runs if run.get("cost")]
    if not priced:
        return None
    currencies = sorted({cost["currency"] for cost in priced})
    if len(currencies) > 1:
        return {"currency": "/".join(currencies), "total": None, "per_1000_images": None,
                "note": "runs were priced in different currencies"}
    total = sum(cost["total"] for cost in priced)
    return {
        "currency": currencies[0],
        "total": round(total, 6),
        "per_1000_images": round(1000 * total / committed, 6) if committed else None,
        "runs_priced": len(priced),
        "runs": len(runs),
    }


DEFAULT_UNITS = {"singular": "sample", "plural": "samples", "verb": "processed", "per_item": {}}


def stage_order(runs: list[dict]) -> list[str]:
    """The chain's stage order as the latest run recorded it (Pipeline.stage_names); runs from
    before it was recorded list their stages in chain order already."""
    order: list[str] = []
    for run in reversed(runs):
        for name in run.get("stage_names") or list(run.get("stages", {})):
            if name not in order:
                order.append(name)
    return order


def job_units(runs: list[dict]) -> dict:
    """How the job names its items (Pipeline.units, recorded by every run)."""
    for run in reversed(runs):
        if run.get("units"):
            return {**DEFAULT_UNITS, **run["units"]}
    return dict(DEFAULT_UNITS)


def per_item_throughput(units: dict, items: int, wall: float) -> dict:
    """Figures per item times the item rate: {"frames": {"per_item": 8, "per_s": ...}} for clips."""
    per_s = items / wall if wall > 0 else None
    return {name: {"per_item": n, "per_s": None if per_s is None else round(per_s * n, 3)}
            for name, n in units.get("per_item", {}).items()}


def _run_status(run: dict, now: float) -> dict:
    if run.get("status") == "running" and now - run.get("updated_unix", now) > STALE_AFTER_S:
        run = {**run, "status": "interrupted"}  # killed: its accounting stops at its last update
    return run


def _run_row(run: dict) -> dict:
    keys = ("run_id", "status", "started", "updated", "wall_s", "startup_s", "stream_start_t", "already_committed",
            "generated",
            "samples_per_s", "gpu_hours", "cpu_hours", "cost", "error")
    row = {k: run.get(k) for k in keys}
    row["failed_samples"] = run.get("failed", run.get("failed_samples", 0))
    row["timeline"] = run.get("timeline", [])
    return row


def aggregate_stages(per_run: list[dict], wall_s: float, order: list[str] = ()) -> dict:
    """Sum per-stage figures over runs, in chain `order`; derive ratios and percentiles from the sums."""
    seen = {n for stages in per_run for n in stages}
    names = [n for n in order if n in seen] + sorted(seen - set(order))
    out = {}
    for name in names:
        parts = [stages[name] for stages in per_run if name in stages]
        total = {k: sum(p.get(k) or 0 for p in parts) for k in _SUMMED}
        service_hist, latency_hist = _merge([p.get("service_hist", {}) for p in parts]), _merge(
            [p.get("latency_hist", {}) for p in parts]
        )
        latency_n = sum(latency_hist.values())
        latency_sum = sum((p["latency_s"]["mean"] or 0) * sum(p.get("latency_hist", {}).values()) for p in parts)
        mean_actors = total["actor_s"] / total["observed_s"] if total["observed_s"] > 0 else None
        items, busy = total["items_out"], total["busy_s"]
        out[name] = {
            **{k: round(v, 4) if isinstance(v, float) else v for k, v in total.items()},
            "kind": parts[-1].get("kind"),
            "utilisation": round(busy / total["actor_s"], 4) if total["actor_s"] > 0 else None,
            "items_per_s": round(items / wall_s, 3) if wall_s > 0 else None,
            "capacity_items_per_s": round(items * mean_actors / busy, 3) if busy > 0 and mean_actors else None,
            "items_per_busy_s": round(items / busy, 3) if busy > 0 else None,
            "gpu_s_per_item": round(total["gpu_s"] / items, 6) if items else None,
            "cpu_s_per_item": round(total["cpu_s"] / items, 6) if items else None,
            "batch_s": {
                "mean": round(busy / total["batches"], 4) if total["batches"] else None,
                **percentiles_from_histogram(service_hist),
                "max": max((p["batch_s"]["max"] or 0 for p in parts), default=None),
            },
            "latency_s": {
                "mean": round(latency_sum / latency_n, 4) if latency_n else None,
                **percentiles_from_histogram(latency_hist),
                "max": max((p["latency_s"]["max"] or 0 for p in parts), default=None),
            },
            "actors": {
                "min": min(p["actors"]["min"] for p in parts),
                "max": max(p["actors"]["max"] for p in parts),
                "mean": round(mean_actors, 3) if mean_actors is not None else None,
            },
            "service_hist": service_hist,
            "latency_hist": latency_hist,
        }
    return out


def _merge(hists: list[dict]) -> dict:
    merged: dict[str, int] = {}
    for hist in hists:
        for bucket, count in hist.items():
            merged[str(bucket)] = merged.get(str(bucket), 0) + count
    return dict(sorted(merged.items(), key=lambda kv: int(kv[0])))


def bottleneck(stages: dict) -> dict | None:
    """The stage with the lowest capacity (items/s it could do with its actors if never starved)."""
    rated = {n: s["capacity_items_per_s"] for n, s in stages.items() if s.get("capacity_items_per_s")}
    if not rated:
        return None
    name = min(rated, key=rated.get)
    s = stages[name]
    others = ", ".join(f"{n} {c:.3g}/s" for n, c in rated.items() if n != name)
    util = f"{100 * s['utilisation']:.0f}% busy" if s.get("utilisation") is not None else "busy time unknown"
    actors = s["actors"]["mean"]
    return {
        "stage": name,
        "capacity_items_per_s": rated[name],
        "why": (
            f"lowest capacity: {rated[name]:.3g} items/s with {actors:g} "
            f"{'slots' if s.get('kind') == 'tasks' else 'actors'} on average ({util})"
            + (f"; others: {others}" if others else "")
        ),
    }


# -- rendering --------------------------------------------------------------------------------


def _num(value, digits: int = 2, unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, str):  # "inf": a PSNR of identical images (pipelines/observe/quality.py)
        return value
    if isinstance(value, int):
        return f"{value:,}{unit}"
    return f"{value:,.{digits}f}{unit}"


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.0f}%"


def render_markdown(report: dict, chart: bool = True) -> str:
    b = report["bottleneck"]
    t = report["totals"]
    cost = t["cost"]
    units = report.get("units") or DEFAULT_UNITS
    one, many, verb = units["singular"], units["plural"], units["verb"]
    lines = [
        f"# latentmill report: {report['job']}",
        "",
        *([f"**Random weights.** {report['weights']}", ""] if report.get("weights") else []),
        f"**Bottleneck: {b['stage']}** ({b['why']})" if b else "**Bottleneck: unknown** (no stage finished a batch yet)",
        "",
        f"Status: **{report['status']}**: {report['committed']:,}/{report['planned']:,} {many} committed "
        f"({report['committed_shards']}/{report['planned_shards']} shards"
        + (f", {report['failed_samples']} failed samples" if report.get("failed_samples") else "")
        + f") over {t['runs']} run(s)"
        + (f"; ETA {report['eta_s']:.0f} s" if report.get("eta_s") is not None else "")
        + f". Output: `{report['output']}`",
        "",
        "## Totals (all runs)",
        "",
        f"| wall time | {many} {verb} | {many}/s | GPU-hours | CPU-hours | cost | cost per 1,000 {many} |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        f"| {_num(t['wall_s'], 1, ' s')} | {t['generated']:,} | {_num(t['images_per_s'], 3)} | "
        f"{_num(t['gpu_hours'], 5)} | {_num(t['cpu_hours'], 5)} | "
        + (f"{cost['total']:.4f} {cost['currency']} | {_num(cost['per_1000_images'], 4)} {cost['currency']} |"
           if cost and cost["total"] is not None else "not priced | add `cost: {gpu_hour: ..., cpu_hour: ...}` to the spec |"),
        "",
        *([", ".join(f"{_num(f['per_s'], 3)} {name}/s ({f['per_item']} per {one})"
                     for name, f in report["per_item"].items()) + ".", ""] if report.get("per_item") else []),
        "## Stages (all runs)",
        "",
        "| stage | items in | items out | batches | items/s | busy s | idle s | utilisation | capacity items/s | batch s mean / p50 / p95 "
        "| latency s p50 / p95 | waiting for input s | input backlog s | backpressured s | actors min-max (mean) "
        "| GPU-s/item | CPU-s/item |",
        "| --- " * 17 + "|",
    ]
    for name, s in report["stages"].items():
        bs, lat, act = s["batch_s"], s["latency_s"], s["actors"]
        lines.append(
            f"| {name} | {s['items_in']:,} | {s['items_out']:,} | {s['batches']:,} | {_num(s['items_per_s'])} | {_num(s['busy_s'], 1)} | "
            f"{_num(s['idle_s'], 1)} | {_pct(s['utilisation'])} | {_num(s['capacity_items_per_s'])} | "
            f"{_num(bs['mean'], 3)} / {_num(bs['p50'], 3)} / {_num(bs['p95'], 3)} | {_num(lat['p50'], 3)} / {_num(lat['p95'], 3)} | "
            f"{_num(s['waiting_for_input_s'], 1)} | {_num(s['input_backlog_s'], 1)} | {_num(s['backpressured_s'], 1)} | "
            f"{act['min']}-{act['max']} ({_num(act['mean'])}) | {_num(s['gpu_s_per_item'], 4)} | {_num(s['cpu_s_per_item'], 4)} |"
        )
    lines += _gpu_lines(report.get("gpu"), report["stages"])
    lines += _quality_lines(report.get("quality"))
    lines += [
        "",
        "## Runs",
        "",
        f"| run | status | started | wall s | already committed | {verb} | {many}/s | GPU-hours | CPU-hours | cost |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in report["runs"]:
        cost_text = f"{r['cost']['total']:.4f} {r['cost']['currency']}" if r.get("cost") else "-"
        lines.append(
            f"| {r['run_id']} | {r['status']} | {r['started']} | {_num(r['wall_s'], 1)} | {r['already_committed']:,} | "
            f"{r['generated']:,} | {_num(r['samples_per_s'], 3)} | {_num(r['gpu_hours'], 5)} | {_num(r['cpu_hours'], 5)} | {cost_text} |"
        )
    if chart:
        lines += ["", f"![per-stage throughput and utilisation]({REPORT_PNG})"]
    lines += [
        "",
        "How to read it: *busy* is time a stage's code ran, summed over its actors; *utilisation* is busy / the time its "
        "actors were ready; *capacity* is what a stage could do with its actors if it never waited, and the bottleneck is "
        "the stage with the lowest. *Waiting for input*: wall time with an idle actor and nothing queued for it. *Input "
        "backlog*: wall time with batches queued and no free actor slot (this stage holds up the one before). "
        "*Backpressured*: wall time this stage's output waited for the next stage. GPU- and CPU-seconds are allocated "
        "resources x time (model loading included, idle included), which is what cost is computed from. The write stage "
        "runs as tasks: its actors are write slots and it holds CPUs only while a write runs.",
        "",
    ]
    return "\n".join(lines)


def _gpu_lines(gpu: dict | None, stages: dict) -> list[str]:
    """Per stage: NVML figures of its GPUs next to its busy time, or "no GPU"; compile time apart."""
    if not gpu:
        return []
    rows = [(name, figures) for name, figures in gpu.items() if name in stages]
    lines = ["", "## GPUs", ""]
    if not any(f["gpu"] for _, f in rows):
        lines.append("GPU telemetry: **no GPU** (no actor had an NVIDIA GPU that NVML could read).")
    else:
        lines += ["| stage | GPUs | busy s | SM util % (while busy) | memory used MB mean / peak | power W mean / peak |",
                  "| --- " * 6 + "|"]
        for name, f in rows:
            g = f["gpu"]
            if g is None:
                lines.append(f"| {name} | no GPU | {_num(stages[name]['busy_s'], 1)} | - | - | - |")
                continue
            lines.append(
                f"| {name} | {', '.join(g['gpus'])} ({', '.join(g['names'])}) | {_num(stages[name]['busy_s'], 1)} | "
                f"{_num(g['sm_util_pct'], 1)} ({_num(g['sm_util_busy_pct'], 1)}) | {_num(g['memory_used_mb'], 0)} / "
                f"{_num(g['memory_peak_mb'], 0)} | {_num(g['power_w'], 1)} / {_num(g['power_peak_w'], 1)} |")
        lines += ["", "Memory and power are the device's: stages sharing a GPU show the same device figures."]
    compiled = [f"{name} {f['compile_s']:.1f} s" for name, f in rows if f.get("compile_s") is not None]
    if compiled:
        lines += ["", f"torch.compile while loading (not in busy time): {', '.join(compiled)}."]
    return lines


QUALITY_TABLE_ROWS = 50  # more shards: the flagged ones are named, the rest are in report.json


def _quality_lines(q: dict | None) -> list[str]:
    if q is None:
        return []
    thresholds = ", ".join(f"{name} {q[name]:g}" for name in ("min_psnr", "min_ssim") if q[name] is not None)
    cost = q.get("cost")
    lines = [
        "",
        "## Quality monitor",
        "",
        f"Decoder `{q['decoder']}` against the reference `{q['reference']}` on {q['monitored']:,} monitored samples "
        f"(fraction {q['fraction']:g}): mean PSNR {_num(q['psnr'])} dB, SSIM {_num(q['ssim'], 4)}. "
        + (f"Thresholds: {thresholds}." if thresholds else "No thresholds set: nothing is flagged."),
        "",
        (f"**Flagged shards ({len(q['flagged'])}):** " + "; ".join(f"{f['shard']} ({f['why']})" for f in q["flagged"])
         if q["flagged"] else "No shard is below the thresholds."),
    ]
    if cost:
        gpu = (f", {_num(cost['gpu_s'], 1)} GPU-s ({_pct(cost['share_of_gpu_s'])} of the job's GPU-seconds)"
               if cost["share_of_gpu_s"] is not None else "")
        lines += ["", f"Monitor cost: {_num(cost['busy_s'], 1)} busy s ({_pct(cost['share_of_busy'])} of all stages' "
                      f"busy time){gpu}."]
    shards = list(q["shards"].items())
    lines += ["", "| shard | monitored | mean PSNR dB | mean SSIM | flagged |", "| --- | --- | --- | --- | --- |"]
    lines += [f"| {name} | {s['monitored']} | {_num(s['psnr'])} | {_num(s['ssim'], 4)} | {'yes' if s['below'] else ''} |"
              for name, s in shards[:QUALITY_TABLE_ROWS]]
    if len(shards) > QUALITY_TABLE_ROWS:
        lines.append(f"\n{len(shards) - QUALITY_TABLE_ROWS:,} more shards in report.json.")
    return lines


def write_job_report(layout: OutputLayout) -> dict:
    """Write report.json, report.md and report.png next to the data; returns the report."""
    report = build_job_report(layout)
    png = render_chart(report)
    write_atomic(layout.fs, layout.path(REPORT_JSON), json.dumps(report, indent=2, sort_keys=True).encode())
    write_atomic(layout.fs, layout.path(REPORT_MD), render_markdown(report, chart=png is not None).encode())
    if png is not None:
        write_atomic(layout.fs, layout.path(REPORT_PNG), png)
    return report
