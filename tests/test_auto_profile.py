"""`stages.auto_profile`: `concurrency: auto` starts from a profile's measured per-item times (as
`latentmill bench gpu` writes them) instead of an even split, then re-balances from the times it
measures itself. Unit tests of the seeding and of the spec field's checks, then one real run on the
session Ray's logical GPUs whose first split comes from a profile."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys

import pytest
import yaml

from jobs.bench.scheduler import PROFILES_FILE, build_pipeline
from jobs.dry_run import dry_run
from jobs.kinds.generate import StagesConfig
from jobs.local import pipeline_for
from jobs.profiles import AutoProfile, starting_times
from jobs.spec import parse_spec
from pipelines.autoscale import GpuRebalancer, StartingTimes, rebalancer_for
from pipelines.config import StageResources
from pipelines.errors import ConfigError, SchedulingError
from pipelines.runner import run_pipeline
from pipelines.verify import verify_output
from tests.conftest import REPO
from tests.support.jobspecs import spec_dict

AUTO = {"stages__denoise__concurrency": "auto", "stages__decode__concurrency": "auto", "stages__gpus": 16}


def profiles_file(path, **stages_by_name) -> str:
    profiles = {name: {"description": "test", "unit": "image", "samples_per_shard": 16, "stages": stages}
                for name, stages in stages_by_name.items()}
    path.write_text(yaml.safe_dump({"profiles": profiles}, sort_keys=False))
    return str(path)


def feed(rebalancer, stage, per_item_s, batches, items=4):
    for _ in range(batches):
        rebalancer.record(stage, items, per_item_s * items)


def test_the_first_split_comes_from_the_starting_times_then_measured_times_take_over():
    start = StartingTimes({"denoise": 3.0, "decode": 0.3}, "profile sdxl-1024-vae in profiles.gpu.yaml")
    r = GpuRebalancer(("denoise", "decode"), slots=8, warmup_batches=2, cooldown_s=0, start=start)
    assert r.initial_split() == {"denoise": 7, "decode": 1}
    assert r.describe_start() == (
        "concurrency auto: starting split 7/1 (denoise/decode) of 8 actors from profile sdxl-1024-vae in "
        "profiles.gpu.yaml (denoise 3000.0 ms/item, decode 300.0 ms/item); measured times take over after warm-up")
    assert r.decide(0.0, r.initial_split()) is None  # nothing measured: the profile's split stands
    # This cluster's decode turns out as slow as its denoise: the measured times move GPUs back.
    feed(r, "denoise", 1.0, 2)
    feed(r, "decode", 1.0, 2)
    decision = r.decide(1.0, r.initial_split())
    assert decision.split == {"denoise": 4, "decode": 4} and decision.previous == {"denoise": 7, "decode": 1}
    assert "after warm-up" in decision.describe()


def test_without_starting_times_the_first_split_is_even_and_says_how_to_seed_it():
    r = GpuRebalancer(("denoise", "decode"), slots=8)
    assert r.initial_split() == {"denoise": 4, "decode": 4}
    assert "starting split 4/4 (denoise/decode) of 8 actors, even: nothing measured yet" in r.describe_start()
    assert "stages.auto_profile" in r.describe_start()


def test_starting_times_must_cover_every_auto_stage_and_be_positive():
    with pytest.raises(ValueError, match="has no time for stage"):
        GpuRebalancer(("denoise", "decode"), slots=4, start=StartingTimes({"denoise": 1.0}, "profile p in f"))
    with pytest.raises(ValueError, match="positive"):
        StartingTimes({"denoise": 0.0}, "profile p in f")


def test_a_spec_starts_from_the_shipped_profile(tmp_path):
    data = spec_dict(tmp_path / "o", **AUTO, stages__auto_profile={"file": PROFILES_FILE, "name": "sdxl-1024-vae"})
    spec = parse_spec(yaml.safe_dump(data), source="job.yaml")
    pipeline = pipeline_for(spec)
    # jobs/bench/profiles.yaml: denoise 3.0 s, decode 0.30 s per image on one GPU.
    assert pipeline.auto_start.per_item_s == {"denoise": 3.0, "decode": 0.3}
    assert pipeline.auto_start.source == f"profile sdxl-1024-vae in {PROFILES_FILE}"
    rebalancer = rebalancer_for(pipeline.stages, pipeline.gpus, 0, pipeline.auto_start)
    assert rebalancer.initial_split() == {"denoise": 14, "decode": 2}
    # Without the field: even, as before.
    plain = pipeline_for(parse_spec(yaml.safe_dump(spec_dict(tmp_path / "o", **AUTO)), source="job.yaml"))
    assert plain.auto_start is None
    assert rebalancer_for(plain.stages, plain.gpus, 0, plain.auto_start).initial_split() == {"denoise": 8, "decode": 8}
    # Only the auto stages need times: a monitor stage without concurrency auto is not asked for.
    section = StagesConfig(denoise=StageResources(concurrency="auto"), decode=StageResources(concurrency=2),
                           auto_profile=AutoProfile(PROFILES_FILE, "svd-xt-576x1024"))
    assert starting_times(section).per_item_s == {"denoise": 60.0}


def test_bad_auto_profiles_are_spec_errors_naming_the_field(tmp_path):
    good = profiles_file(tmp_path / "p.yaml", sdxl={"denoise": {"per_item_s": 3.0}, "decode": {"per_item_s": 0.3}},
                         half={"denoise": {"per_item_s": 3.0}}, zero={"denoise": {"per_item_s": 3.0},
                                                                      "decode": {"per_item_s": 0}})
    (tmp_path / "not-profiles.yaml").write_text("stages: {denoise: 1}\n")
    cases = [
        (AUTO, {"file": str(tmp_path / "missing.yaml"), "name": "sdxl"}, "stages.auto_profile.file", "does not exist"),
        (AUTO, {"file": str(tmp_path / "not-profiles.yaml"), "name": "sdxl"}, "stages.auto_profile.file",
         "is not a profiles file"),
        (AUTO, {"file": good, "name": "sdlx"}, "stages.auto_profile.name", "no profile 'sdlx' in .*it has: sdxl, half"),
        (AUTO, {"file": good, "name": "half"}, "stages.auto_profile.name", "no positive per_item_s for the auto "
                                                                          "stage\\(s\\) decode"),
        (AUTO, {"file": good, "name": "zero"}, "stages.auto_profile.name", "decode"),
        ({}, {"file": good, "name": "sdxl"}, "stages.auto_profile", "no stage has `concurrency: auto`"),
        (AUTO, {"file": good}, "stages.auto_profile", "name"),
    ]
    for auto, profile, field, message in cases:
        data = spec_dict(tmp_path / "o", **auto, stages__auto_profile=profile)
        with pytest.raises(ConfigError, match=f"{re.escape(field)}.*{message}"):
            parse_spec(yaml.safe_dump(data), source="job.yaml")


def test_the_dry_run_prints_the_starting_split_when_stages_gpus_sets_the_budget(tmp_path):
    profile = {**AUTO, "stages__auto_profile": {"file": PROFILES_FILE, "name": "sdxl-1024-vae"}}

    def dry_run_of(**changes) -> list[str]:
        spec = parse_spec(yaml.safe_dump(spec_dict(tmp_path / "o", **changes)), source="job.yaml")
        return [line.strip() for line in dry_run(spec).splitlines()]

    # The run's own phase line (GpuRebalancer.describe_start) for the 16 GPUs of stages.gpus.
    assert dry_run_of(**profile)[-1] == (
        f"concurrency auto: starting split 14/2 (denoise/decode) of 16 actors from profile sdxl-1024-vae in "
        f"{PROFILES_FILE} (denoise 3000.0 ms/item, decode 300.0 ms/item); measured times take over after warm-up")
    # Without stages.gpus the budget is the cluster's GPUs, unknown until the run connects to it.
    assert dry_run_of(**{**profile, "stages__gpus": None})[-1] == (
        f"concurrency auto: the starting split of the cluster's GPUs is chosen from profile sdxl-1024-vae in "
        f"{PROFILES_FILE} once they are known (stages.gpus sets the budget and shows the split here)")
    assert dry_run_of(**AUTO)[-1].startswith("concurrency auto: starting split 8/8 (denoise/decode) of 16 actors, even")
    assert "is even once they are known" in dry_run_of(**{**AUTO, "stages__gpus": None})[-1]
    assert not any(line.startswith("concurrency auto") for line in dry_run_of())  # no auto stage, no line
    # A budget too small to give each auto stage an actor fails the dry-run as it would fail the run.
    with pytest.raises(SchedulingError, match="1 GPUs are available \\(stages.gpus\\)"):
        dry_run_of(**{**AUTO, "stages__gpus": 1})


def test_the_command_line_says_a_missing_profile_file_in_one_line_with_exit_2(tmp_path):
    spec = tmp_path / "job.yaml"
    spec.write_text(yaml.safe_dump(spec_dict(tmp_path / "o", **AUTO)))
    missing = tmp_path / "profiles.gpu.yaml"
    done = subprocess.run([sys.executable, "-m", "jobs.cli", "run", str(spec), "--dry-run",
                           "--set", f"stages.auto_profile={{file: {missing}, name: sdxl-1024-vae}}"],
                          capture_output=True, text=True, cwd=REPO, timeout=300, check=False)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().count("\n") == 0 and "Traceback" not in done.stderr
    assert "stages.auto_profile.file" in done.stderr and "does not exist" in done.stderr


def test_a_real_run_starts_from_the_profile_split_and_rebalances_from_measured_times(ray_cluster, tmp_path):
    # 8 actors of a quarter GPU on the session's 2 logical GPUs. The profile says decode is the slow
    # stage (start 2/6); the stages really take denoise 40 ms and decode 8 ms per item, so once warm
    # the measured times move GPUs to denoise.
    real = {"denoise": {"per_item_s": 0.04, "batch_size": 4}, "decode": {"per_item_s": 0.008, "batch_size": 4}}
    file = profiles_file(tmp_path / "profiles.gpu.yaml",
                         wrong={"denoise": {"per_item_s": 0.008}, "decode": {"per_item_s": 0.04}})
    section = StagesConfig(denoise=StageResources(concurrency="auto"), decode=StageResources(concurrency="auto"),
                           auto_profile=AutoProfile(file, "wrong"))
    profile = {"description": "test", "unit": "image", "samples_per_shard": 16, "stages": real}
    url = str(tmp_path / "out")
    pipeline = build_pipeline(profile, "auto", url, 480, 1.0, (4, 8, 8), gpus=2, gpu_share=0.25)
    pipeline = dataclasses.replace(pipeline, auto_start=starting_times(section))
    report = run_pipeline(pipeline, progress=False, start_timeout_s=300)
    notes = [n for n in report["notes"] if n.startswith("concurrency auto")]
    assert len(notes) >= 2, report["notes"]  # the starting split, then at least the decision after warm-up
    assert notes[0].startswith(f"concurrency auto: starting split 2/6 (denoise/decode) of 8 actors from profile "
                               f"wrong in {file}"), notes
    assert "(was denoise 2, decode 6) after warm-up" in notes[1], notes
    first = re.search(r"GPUs split denoise (\d+), decode (\d+)", notes[1]).groups()
    assert int(first[0]) > 2
    assert verify_output(url)["ok"] and report["generated"] == 480
