"""`latentmill bench scheduler` on real Ray: a tiny smoke run of the command (its own local Ray with 4
logical GPUs, latentmill and the Ray Data peer), and `concurrency: auto` re-balancing a real run on
the session Ray when the decode stage slows down mid-run."""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys

import yaml

from jobs.bench.common import steady_rate
from jobs.bench.scheduler import build_pipeline
from pipelines.runner import run_pipeline
from pipelines.verify import verify_output
from tests.conftest import REPO

PROFILE = {
    "description": "test: tiny times", "unit": "image", "samples_per_shard": 16,
    "stages": {"denoise": {"per_item_s": 0.02, "batch_size": 4}, "decode": {"per_item_s": 0.005, "batch_size": 4}},
}


def test_steady_rate_of_bursty_commits():
    # Bursts of 3 commits of 10 items every second: 30 items/s whatever the window's ends.
    events = [(t + 0.001 * k, 10) for t in range(20) for k in range(3)]
    assert abs(steady_rate(events) - 30) < 1.5


def test_steady_rate_follows_the_bottleneck_not_the_bursts_or_the_drain():
    # 64 GPUs' worth: a wave of 15 shards of 32 items committed over 0.2 s every 1.2 s (400 items/s),
    # then the drain: the last 15% of the items committed three times as fast.
    rng = random.Random(0)
    events = [(1.2 * wave + 0.2 * rng.random(), 32) for wave in range(7) for _ in range(15)]
    events += [(8.4 + k * 32 / 1200, 32) for k in range(18)]
    assert abs(steady_rate(events) / 400 - 1) < 0.03


def test_bench_scheduler_command_puts_both_systems_through_the_one_steady_rule(processes, tmp_path):
    # A tiny real run of each system at 4 logical GPUs: latentmill and Ray Data's three configurations.
    profiles = tmp_path / "profiles.yaml"
    profiles.write_text(yaml.safe_dump({"profiles": {"tiny": PROFILE}}, sort_keys=False))  # chain order
    command = [sys.executable, "-m", "jobs.cli", "bench", "scheduler", "--gpus", "4", "--profiles", str(profiles),
               "--seconds", "2", "--time-scale", "1", "--cpus", "2", "--workdir", str(tmp_path), "--repeats", "1",
               "--json", "--record", str(tmp_path / "record.jsonl")]
    done = processes.run(command, cwd=REPO, timeout=900)  # it starts Ray clusters of its own
    assert done.returncode == 0, done.stderr[-3000:]
    table, result = done.stdout.split("\n[")[0], json.loads("[" + done.stdout.split("\n[", 1)[1])[0]
    # A 2 s run may leave any system's window above the ideal: the rule rejects it (checked per system below).
    assert "| tiny | 4 | 3/1 | 384 | 150.0 (denoise) | latentmill | 1 (" in table
    assert "steady/s median (min-max)" in table and "Rejected windows (not in the medians):" in table
    # Ideal for 3 denoise actors at 0.02 s per item: 150 items/s (write is far faster).
    assert result["split"] == {"denoise": 3, "decode": 1} and result["ideal"]["set_by"] == "denoise"
    assert abs(result["ideal"]["items_per_s"] - 150) < 1e-6
    assert set(result["runs"]) == {"latentmill", "ray_data tuned", "ray_data defaults", "ray_data from_items"}
    for system, (run,) in result["runs"].items():
        steady = run["steady"]
        # Same items for every system, every one of them in the record the rule reads.
        assert steady["items"] == result["images"] == 384, system
        assert steady["startup_s"] > 0 and steady["whole_run_items_per_s"] > 0, system
        if steady["rejected"] is None:
            group = run["rows_per_file"]["max"] if "rows_per_file" in run else 16  # a file, or a shard
            assert 0 < steady["items_per_s"] <= 150 + group / steady["window_s"], system
            assert steady["window_items"] == 192, system  # the middle half of the items
        else:
            assert steady["items_per_s"] is None and f"| {system} | 1 (1) |" in table, system
    latentmill = result["runs"]["latentmill"][0]
    assert latentmill["committed_shards"] == latentmill["planned_shards"] == 24
    assert latentmill["driver_cpu_ms_per_item"] > 0
    for configuration in ("tuned", "from_items"):  # one block per shard, min_rows_per_file = shard
        run = result["runs"][f"ray_data {configuration}"][0]
        assert run["files"] == 24 and run["rows_per_file"] == {"min": 16, "max": 16}, configuration
    # The record kept the result as it finished; its tables are the run's (a long run keeps what it measured).
    again = processes.run(command[:5] + ["--tables-from", str(tmp_path / "record.jsonl")], cwd=REPO, timeout=120)
    assert again.returncode == 0 and again.stdout.strip() == table.split("\n", 1)[1].strip(), again.stderr[-2000:]


def test_bench_scheduler_refuses_zero_repeats():
    command = [sys.executable, "-m", "jobs.cli", "bench", "scheduler", "--repeats", "0"]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2 and done.stderr.strip() == "error: --repeats must be at least 1, got 0"
    side_by_side = [sys.executable, "-m", "jobs.bench.sidebyside", "--repeats", "0"]
    done = subprocess.run(side_by_side, cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2 and done.stderr.strip() == "error: --repeats must be at least 1, got 0"


def test_bench_scheduler_refuses_an_unknown_ray_data_configuration():
    command = [sys.executable, "-m", "jobs.cli", "bench", "scheduler", "--ray-data", "tuned,fast"]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2
    assert done.stderr.strip() == ("error: --ray-data: unknown configuration(s) ['fast']; "
                                   "expected some of ['tuned', 'defaults', 'from_items']")


def test_concurrency_auto_rebalances_a_real_run_when_decode_slows_down(ray_cluster, tmp_path):
    # 8 actors of a quarter GPU on the session's 2 logical GPUs, starting 4/4. Nominal: denoise 40 ms,
    # decode 8 ms per item -> GPUs go to denoise (6/2 at these times; measured times carry some
    # overhead on a loaded machine, so only the direction is asserted). From sample 1000 on, decode
    # takes 60 ms -> GPUs go back to decode (3/5 nominal).
    profile = {**PROFILE, "stages": {
        "denoise": {"per_item_s": 0.04, "batch_size": 4},
        "decode": {"per_item_s": 0.008, "batch_size": 4, "changes": [{"from_index": 1000, "per_item_s": 0.06}]},
    }}
    url = str(tmp_path / "out")
    pipeline = build_pipeline(profile, "auto", url, 1600, 1.0, (4, 8, 8), gpus=2, gpu_share=0.25)
    report = run_pipeline(pipeline, progress=False, start_timeout_s=300)
    notes = [n for n in report["notes"] if n.startswith("concurrency auto at ")]  # its decisions
    splits = [tuple(int(k) for k in re.search(r"GPUs split denoise (\d+), decode (\d+)", n).groups()) for n in notes]
    assert len(notes) >= 2, report["notes"]
    assert "(was denoise 4, decode 4) after warm-up" in notes[0] and splits[0][0] > 4
    assert "as measured rates drifted" in notes[-1] and splits[-1][1] > splits[0][1]
    assert report["stages"]["decode"]["actors"]["max"] >= splits[-1][1]
    assert verify_output(url)["ok"] and report["generated"] == 1600


def test_side_by_side_runs_both_systems_on_the_real_tiny_stages(processes, tmp_path):
    # The real tiny SDXL stages through `latentmill run` and through the Ray Data pipeline a user would
    # write with the same classes; each system writes every image, and each run is reported as it ends.
    command = [sys.executable, "-m", "jobs.bench.sidebyside", "--images", "16", "--repeats", "1",
               "--workdir", str(tmp_path)]
    done = processes.run(command, cwd=REPO, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    for system in ("latentmill", "ray_data"):
        assert re.search(rf"^\| 16 \| {system} \| 1 \| [\d.]+ \([\d.]+-[\d.]+\) \| 16 \|$", done.stdout, re.M), done.stdout
        assert re.search(rf"^16 images, {system} run 1: [\d.]+ s, 16 images; load [\d.]+ -> [\d.]+$", done.stderr, re.M)
    assert list(tmp_path.iterdir()) == []  # outputs removed once measured
