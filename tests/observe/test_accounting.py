"""Throughput accounting checked against what really happened, on real runs on the local Ray."""

from __future__ import annotations

import json
import shutil
import time

import pytest
import yaml

from jobs.cli import main as cli_main
from jobs.local import run_job
from jobs.spec import parse_spec
from pipelines.errors import SchedulingError
from pipelines.observe.accounting import bucket_of, exact_percentile, percentiles_from_histogram
from pipelines.observe.report import build_job_report, open_job_output
from pipelines.verify import verify_output
from tests.support.jobspecs import spec_dict

PRICES = {"gpu_hour": 2.5, "cpu_hour": 0.04}
# Denoise holds one (logical) GPU per actor, so GPU-seconds are not trivially zero.
CHANGES = {"cost": PRICES, "stages__denoise__num_gpus": 1}


def make_spec(output, **changes):
    return parse_spec(yaml.safe_dump(spec_dict(output, **{**CHANGES, **changes})), source="test.yaml")


@pytest.fixture(scope="module")
def finished(ray_cluster, tmp_path_factory):
    out = tmp_path_factory.mktemp("accounting") / "out"
    started = time.monotonic()
    report = run_job(make_spec(out), progress=False)
    report["measured_wall_s"] = time.monotonic() - started  # by the test, not the run
    return out, report


def test_item_counts_equal_samples_written(finished):
    out, report = finished
    written = verify_output(str(out))["samples"]
    assert written == report["generated"] == 24
    for name in ("denoise", "decode", "write"):
        stage = report["stages"][name]
        assert stage["items_in"] == stage["items_out"] == written, name
        assert stage["failed_batches"] == 0
    assert report["stages"]["denoise"]["batches"] == report["stages"]["decode"]["batches"] == 6  # 24 / batch_size 4
    assert report["stages"]["write"]["batches"] == 3  # one write per shard of 8


def test_busy_time_fits_in_the_actor_time_held(finished):
    _, report = finished
    for name, stage in report["stages"].items():
        assert 0 < stage["busy_s"] <= report["wall_s"] * stage["actors"]["max"], name
        # Busy is measured inside the actors, actor time by the driver: they must agree.
        assert stage["busy_s"] <= stage["actor_s"] * 1.02 + 0.05, name
        assert 0 < stage["utilisation"] <= 1.02, name
        assert stage["idle_s"] == pytest.approx(max(0.0, stage["actor_s"] - stage["busy_s"]), abs=2e-3)
        latency = stage["latency_s"]
        assert latency["p50"] <= latency["p95"] <= latency["max"]
        # A batch's latency (submission to result) includes its service time.
        assert latency["max"] >= stage["batch_s"]["max"] - 0.01
    # Reserved time includes model loading, so it is at least the ready time.
    denoise = report["stages"]["denoise"]
    assert denoise["reserved_actor_s"] >= denoise["actor_s"] - 1e-3
    assert report["startup_s"] > 0


def test_gpu_seconds_and_cost_are_resource_hours_times_price(finished):
    _, report = finished
    denoise, decode, write = (report["stages"][n] for n in ("denoise", "decode", "write"))
    assert denoise["gpus_per_actor"] == 1 and decode["gpus_per_actor"] == 0
    assert denoise["gpu_s"] == pytest.approx(denoise["reserved_actor_s"], rel=1e-3)
    assert decode["gpu_s"] == write["gpu_s"] == 0
    assert denoise["gpu_s_per_item"] == pytest.approx(denoise["gpu_s"] / 24, rel=1e-3)
    assert decode["cpu_s"] == pytest.approx(0.5 * decode["reserved_actor_s"], rel=1e-3)
    assert write["cpu_s"] == pytest.approx(0.25 * write["reserved_actor_s"], rel=1e-3)
    gpu_hours = sum(s["gpu_s"] for s in report["stages"].values()) / 3600
    cpu_hours = sum(s["cpu_s"] for s in report["stages"].values()) / 3600
    assert report["gpu_hours"] == pytest.approx(gpu_hours, rel=1e-4) and gpu_hours > 0
    assert report["cpu_hours"] == pytest.approx(cpu_hours, rel=1e-4)


def test_cost_lies_between_bounds_measured_outside_the_report(finished):
    """Resources are held at least while the stages' code ran (busy seconds recorded per sample in
    the manifests) and at most while run_job ran (timed by this test); the cost lies between."""
    import pyarrow.parquet as pq

    out, report = finished
    rows = [r for f in sorted((out / "shards").glob("*.parquet")) for r in pq.read_table(f).to_pylist()]
    denoise_busy = sum(r["denoise_ms"] for r in rows) / 1000
    decode_busy = sum(r["decode_ms"] for r in rows) / 1000
    wall = report["measured_wall_s"]
    # denoise: 1 GPU + 1 CPU per actor, decode: 0.5 CPU, write: 2 slots of 0.25 CPU (the spec's).
    low = (denoise_busy * 2.5 + (denoise_busy * 1 + decode_busy * 0.5) * 0.04) / 3600
    high = wall * (1 * 2.5 + (1 + 0.5 + 2 * 0.25) * 0.04) / 3600
    assert 0 < low <= report["cost"]["total"] <= high
    assert report["stages"]["denoise"]["gpu_s"] >= denoise_busy * 0.99 - 0.01
    assert report["stages"]["denoise"]["gpu_s"] <= wall
    assert 1000 * low / 24 <= report["cost"]["per_1000_images"] <= 1000 * high / 24


def test_job_cost_prices_each_run_at_its_own_prices_per_committed_image(tmp_path):
    """Two runs at different prices; one shard was generated twice. Values computed by hand."""
    out = tmp_path / "out"
    (out / "runs").mkdir(parents=True)
    (out / "latentmill.json").write_text(json.dumps({"name": "j", "planned": 24, "shards": 3, "identity": {}}))
    shards = [{"name": f"0000{i}", "tar": f"shards/0000{i}.tar", "samples": 8, "failed": 0} for i in range(3)]
    (out / "index.json").write_text(json.dumps({"format_version": 1, "shards": shards, "samples": 24, "failed": 0}))
    runs = [
        # 2 GPU-hours and 10 CPU-hours at 2.5 and 0.04: 5.0 + 0.4 = 5.4
        ("a", 24, 2.0, 10.0, {"currency": "USD", "gpu_hour": 2.5, "cpu_hour": 0.04, "total": 5.4}),
        # 1 GPU-hour and 4 CPU-hours at 3.0 and 0.05: 3.0 + 0.2 = 3.2 (8 samples regenerated)
        ("b", 8, 1.0, 4.0, {"currency": "USD", "gpu_hour": 3.0, "cpu_hour": 0.05, "total": 3.2}),
    ]
    for run_id, generated, gpu_h, cpu_h, cost in runs:
        (out / "runs" / f"{run_id}.json").write_text(json.dumps({
            "run_id": run_id, "status": "finished", "started": f"2026-01-0{len(run_id)}T00:00:0{run_id == 'b'}",
            "wall_s": 100.0, "generated": generated, "gpu_hours": gpu_h, "cpu_hours": cpu_h, "cost": cost, "stages": {},
        }))
    cost = build_job_report(open_job_output(str(out)))["totals"]["cost"]
    assert cost["total"] == pytest.approx(8.6)
    assert cost["per_1000_images"] == pytest.approx(8.6 / 24 * 1000)  # 358.33 per 1,000 of the 24 images


def test_reports_are_written_next_to_the_data(finished):
    out, report = finished
    (run_file,) = (out / "runs").iterdir()
    saved = json.loads(run_file.read_text())
    assert saved["run_id"] == report["run_id"] and saved["status"] == "finished"
    job = json.loads((out / "report.json").read_text())
    assert job["status"] == "complete" and job["committed"] == 24 and job["totals"]["runs"] == 1
    assert job["bottleneck"]["stage"] in {"denoise", "decode", "write"}
    markdown = (out / "report.md").read_text().splitlines()
    assert f"Bottleneck: {job['bottleneck']['stage']}" in "\n".join(markdown[:3])
    assert (out / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    timeline = saved["timeline"]
    assert timeline[-1]["items"]["write"] == 24 and timeline[-1]["committed"] == 24
    assert all(a["t"] <= b["t"] for a, b in zip(timeline, timeline[1:]))


def test_report_command_prints_a_narrow_summary_then_a_stage_table(finished, capsys):
    out, _ = finished
    assert cli_main(["report", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    stage = json.loads((out / "report.json").read_text())["bottleneck"]["stage"]
    summary = lines[: lines.index("")]
    names = [line.split()[0] for line in summary[1:] if not line.startswith(" " * 14)]
    assert names == ["status", "wall", "throughput", "bottleneck", "cost", "resources", "GPUs", "problems"], summary
    assert any(line.startswith("  GPUs        no GPU") for line in summary), summary  # this machine has none
    assert any(line.startswith(f"  bottleneck  {stage}: lowest capacity") for line in summary), summary
    assert any(line.startswith("  cost") and "USD per 1,000 images" in line for line in summary), summary
    assert "complete: 24/24 images committed" in summary[1] and "0 failed, 0 rejected" in summary[-1]
    header = next(i for i, line in enumerate(lines) if line.startswith("stage "))
    assert [line.split()[0] for line in lines[header + 2: header + 5]] == ["denoise", "decode", "write"]
    assert max(len(line) for line in lines) <= 100
    assert cli_main(["report", str(out), "--full"]) == 0
    wide = capsys.readouterr().out.splitlines()
    assert any("backpressured s" in line and "latency s p50/p95" in line for line in wide)
    assert cli_main(["report", str(out), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["totals"]["generated"] == 24 and printed["bottleneck"]["stage"] == stage


def test_resumed_job_totals_are_the_sum_of_its_runs(finished, tmp_path):
    """Second run: the last shard's commit marker is lost (as if the first run died while writing it)."""
    first_out, first = finished
    out = tmp_path / "out"
    shutil.copytree(first_out, out)
    (out / "shards" / "00002.done.json").unlink()
    second = run_job(make_spec(out), progress=False)
    assert (second["already_committed"], second["generated"]) == (16, 8)
    assert verify_output(str(out))["ok"]

    job = build_job_report(open_job_output(str(out)))
    runs = (first, second)
    assert [r["run_id"] for r in job["runs"]] == [r["run_id"] for r in runs]
    totals = job["totals"]
    assert totals["runs"] == 2 and totals["generated"] == 24 + 8  # the lost shard was generated twice
    assert job["committed"] == 24 and job["status"] == "complete"
    for key in ("wall_s", "gpu_hours", "cpu_hours"):
        assert totals[key] == pytest.approx(sum(r[key] for r in runs), rel=1e-4), key
    assert totals["cost"]["total"] == pytest.approx(sum(r["cost"]["total"] for r in runs), rel=1e-3)
    for name in ("denoise", "decode", "write"):
        for key in ("items_in", "items_out", "batches", "busy_s", "actor_s", "gpu_s", "cpu_s"):
            expected = sum(r["stages"][name][key] for r in runs)
            assert job["stages"][name][key] == pytest.approx(expected, rel=1e-3, abs=1e-3), (name, key)
        assert job["stages"][name]["items_out"] == 32
    # Both runs are in the markdown, and the job report on disk is the aggregate.
    assert json.loads((out / "report.json").read_text())["totals"]["generated"] == 32
    markdown = (out / "report.md").read_text()
    assert first["run_id"] in markdown and second["run_id"] in markdown


def test_running_and_killed_runs_are_told_apart(finished, tmp_path):
    """A run report that says running is live while it is being updated, interrupted once it stops."""
    out = tmp_path / "out"
    shutil.copytree(finished[0], out)
    (run_file,) = (out / "runs").iterdir()
    run = json.loads(run_file.read_text())
    run.update(status="running", eta_s=12.0)
    run_file.write_text(json.dumps(run))
    layout = open_job_output(str(out))
    live = build_job_report(layout, now=run["updated_unix"] + 5)
    assert live["status"] == "running" and live["eta_s"] == 12.0
    dead = build_job_report(layout, now=run["updated_unix"] + 3600)
    assert dead["runs"][0]["status"] == "interrupted" and dead["eta_s"] is None


def test_latency_histograms_merge_within_their_bucket_width():
    values = [0.02 * 1.003**i for i in range(1500)] + [0.2] * 300  # dense, so ranks interpolate little
    hist: dict[int, int] = {}
    for v in values:
        hist[bucket_of(v)] = hist.get(bucket_of(v), 0) + 1
    approx = percentiles_from_histogram(hist)
    for name, q in (("p50", 0.5), ("p95", 0.95)):
        exact = exact_percentile(values, q)
        # Buckets are 5% wide and report their middle: within 2.5% (plus rounding) of the exact value.
        assert exact / 1.03 <= approx[name] <= exact * 1.03, (name, approx[name], exact)


def test_a_failed_run_still_leaves_its_report(ray_cluster, tmp_path):
    """Actors that cannot start in time fail the run; its report says so and counts what it held."""
    out = tmp_path / "out"
    with pytest.raises(SchedulingError, match="did not start"):
        run_job(make_spec(out), progress=False, start_timeout_s=0.01)
    (run_file,) = (out / "runs").iterdir()
    run = json.loads(run_file.read_text())
    assert run["status"] == "failed" and "did not start" in run["error"]
    assert run["generated"] == 0
    job = json.loads((out / "report.json").read_text())
    assert job["status"] == "incomplete" and job["runs"][0]["status"] == "failed"
    assert job["committed"] == 0 and job["bottleneck"] is None
