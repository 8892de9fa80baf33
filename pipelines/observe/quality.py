"""The quality monitor's results: per shard the mean PSNR/SSIM of its monitored samples against the
reference decoder, and the shards below the thresholds of the job's spec.

The monitor stage (pipelines/stages/quality.py) writes `monitor_psnr` and `monitor_ssim` into the
manifests; this reads them back from the committed shards, so the report, the metrics export and
`latentmill verify --quality` agree, with the thresholds saved with the job (latentmill.json).
"""

from __future__ import annotations

import statistics

from pipelines.config import MODEL_VAE
from pipelines.sinks.storage import json_safe, read_table

COLUMNS = ("monitor_psnr", "monitor_ssim")


def monitor_settings(job_record: dict) -> dict | None:
    """The spec's quality_monitor section ({fraction, min_psnr, min_ssim}), None when off."""
    return (job_record.get("spec") or {}).get("quality_monitor")


def quality_summary(layout, job_record: dict, index: dict | None = None) -> dict | None:
    """Per shard and overall means of the monitored samples, and the flagged shards; None for a job
    without a monitor. Values are JSON-safe (a PSNR of identical images is the string "inf")."""
    settings = monitor_settings(job_record)
    if settings is None:
        return None
    index = layout.read_index() if index is None else index
    shards, every = {}, {column: [] for column in COLUMNS}
    for entry in index["shards"]:
        values = _monitored_values(layout, entry)
        for column in COLUMNS:
            every[column] += values[column]
        shards[entry["name"]] = shard = {"monitored": len(values["monitor_psnr"]), **_means(values)}
        shard["below"] = _below(shard, settings)
    flagged = [{"shard": name, "why": "; ".join(s["below"])} for name, s in shards.items() if s["below"]]
    return json_safe({
        **settings,
        "decoder": (job_record.get("spec") or {}).get("decoder"),
        "reference": MODEL_VAE,
        "monitored": len(every["monitor_psnr"]),
        **_means(every),
        "shards": shards,
        "flagged": flagged,
    })


def _monitored_values(layout, entry: dict) -> dict[str, list[float]]:
    path = layout.path(entry["manifest"])
    table = layout.retrying(f"reading manifest {entry['name']}", lambda: read_table(layout.fs, path))
    # A shard whose samples all failed has no monitor columns (failed rows carry no fields).
    return {column: [v for v in table.column(column).to_pylist() if v is not None]
            if column in table.column_names else [] for column in COLUMNS}


def _means(values: dict[str, list[float]]) -> dict:
    """Mean PSNR (dB, averaged per image as `latentmill eval` does) and SSIM; None with no samples."""
    return {name: statistics.fmean(values[f"monitor_{name}"]) if values[f"monitor_{name}"] else None
            for name in ("psnr", "ssim")}


def _below(shard: dict, settings: dict) -> list[str]:
    """Why a shard is flagged: each mean under its threshold. A shard without monitored samples
    (a small shard, a low fraction) is never flagged: it has no measure."""
    reasons = []
    for name, label, unit in (("psnr", "PSNR", " dB"), ("ssim", "SSIM", "")):
        threshold, mean = settings.get(f"min_{name}"), shard[name]
        if threshold is not None and mean is not None and mean < threshold:
            reasons.append(f"mean {label} {mean:.3f}{unit} < min_{name} {threshold:g}")
    return reasons


def monitor_cost(stages: dict) -> dict | None:
    """The monitor stage's share of the job's work, from the report's per-stage figures."""
    monitor = stages.get("monitor")
    if monitor is None:
        return None
    busy = sum(s["busy_s"] for s in stages.values())
    gpu_s = sum(s["gpu_s"] for s in stages.values())
    return {
        "busy_s": monitor["busy_s"], "gpu_s": monitor["gpu_s"], "cpu_s": monitor["cpu_s"],
        "share_of_busy": round(monitor["busy_s"] / busy, 4) if busy > 0 else None,
        "share_of_gpu_s": round(monitor["gpu_s"] / gpu_s, 4) if gpu_s > 0 else None,
    }
