"""End-to-end generation on a real local Ray, read back with the real webdataset and Ray Data readers."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import yaml
from PIL import Image

from jobs.local import run_job
from jobs.spec import parse_spec
from pipelines.errors import OutputError, SchedulingError
from pipelines.sinks.layout import OutputLayout
from pipelines.verify import verify_output
from tests.support.jobspecs import spec_dict


def make_spec(output, overrides=(), **changes):
    return parse_spec(yaml.safe_dump(spec_dict(output, **changes)), source="test.yaml", overrides=list(overrides))


def shard_digests(url) -> dict[str, str]:
    return {name: m["tar_sha256"] for name, m in OutputLayout(str(url)).committed_markers().items()}


@pytest.fixture(scope="module")
def finished_job(ray_cluster, tmp_path_factory):
    """One uninterrupted run, shared by the read-back tests."""
    out = tmp_path_factory.mktemp("finished") / "out"
    spec = make_spec(out)
    report = run_job(spec, progress=False)
    return spec, out, report


def test_run_writes_verified_shards(finished_job):
    spec, out, report = finished_job
    assert report["generated"] == 24 and report["planned"] == 24
    result = verify_output(str(out))
    assert result["ok"], result["problems"]
    assert (result["samples"], result["unique_keys"], result["duplicates"], result["missing"]) == (24, 24, 0, 0)
    assert result["committed_shards"] == 3
    index = json.loads((out / "index.json").read_text())
    assert [s["name"] for s in index["shards"]] == ["00000", "00001", "00002"]


def test_report_accounts_every_stage_and_actor(finished_job):
    _, out, report = finished_job
    for stage in ("denoise", "decode", "write"):
        assert report["stages"][stage]["items_out"] == 24
    assert {a["stage"] for a in report["actors"]} == {"denoise", "decode"}
    (saved,) = (out / "runs").iterdir()
    assert json.loads(saved.read_text())["run_id"] == report["run_id"]


def test_webdataset_reads_every_sample_with_its_prompt(finished_job):
    import webdataset as wds

    spec, out, _ = finished_job
    urls = OutputLayout(str(out)).tar_urls()
    samples = list(wds.WebDataset(urls, shardshuffle=False))
    assert len(samples) == 24
    prompts = spec.prompts.inline
    for sample in samples:
        index = int(sample["__key__"])
        meta = json.loads(sample["json"])
        assert sample["txt"].decode() == prompts[(index // 4) % 3] == meta["prompt"]
        assert meta["seed"] == 7 + index
        image = Image.open(io.BytesIO(sample["png"]))
        assert image.size == (64, 64) and image.mode == "RGB"


def test_ray_data_reads_every_sample(finished_job):
    import ray

    _, out, _ = finished_job
    rows = ray.data.read_webdataset(OutputLayout(str(out)).tar_urls(), decoder=None).take_all()
    assert sorted(r["__key__"] for r in rows) == [f"{i:09d}" for i in range(24)]
    assert all(r["txt"] for r in rows)


def test_manifest_rows_match_samples(finished_job):
    import pyarrow.parquet as pq

    _, out, _ = finished_job
    table = pq.read_table(out / "shards" / "00001.parquet").to_pylist()
    assert [r["key"] for r in table] == [f"{i:09d}" for i in range(8, 16)]
    assert all(r["denoise_ms"] > 0 and r["decode_ms"] > 0 and r["bytes"] > 0 for r in table)


def test_same_spec_same_bytes_and_rerun_is_a_no_op(finished_job, tmp_path):
    spec, out, _ = finished_job
    again = make_spec(tmp_path / "again")
    run_job(again, progress=False)
    assert shard_digests(tmp_path / "again") == shard_digests(out)
    report = run_job(spec, progress=False)  # same output: nothing left to do
    assert report["generated"] == 0 and report["already_committed"] == 24


def test_debris_of_an_interrupted_write_is_removed_and_the_shard_redone(finished_job, tmp_path):
    import shutil

    _, out, _ = finished_job
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    # As if a writer died mid-shard: marker gone, tar truncated, a stray temp file left behind.
    (copy / "shards" / "00001.done.json").unlink()
    tar = copy / "shards" / "00001.tar"
    tar.write_bytes(tar.read_bytes()[:1000])
    (copy / "shards" / "00002.tar.tmp-dead").write_bytes(b"x")
    assert not verify_output(str(copy))["ok"]
    report = run_job(make_spec(copy), progress=False)
    assert report["generated"] == 8
    assert not (copy / "shards" / "00002.tar.tmp-dead").exists()
    assert verify_output(str(copy))["ok"]
    assert shard_digests(copy) == shard_digests(out)


def test_output_of_another_job_is_refused(finished_job):
    _, out, _ = finished_job
    with pytest.raises(OutputError, match="already holds a different job"):
        run_job(make_spec(out, seed=8), progress=False)


def test_regrouped_run_pins_denoise_actors_to_distinct_gpus_and_moves_pixels_by_at_most_one_level(
    finished_job, tmp_path
):
    # The same job on two denoise actors of one GPU each, with other batch sizes.
    _, out, _ = finished_job
    spec = make_spec(
        tmp_path / "gpu",
        ["stages.denoise.num_gpus=1", "stages.denoise.concurrency=2", "stages.denoise.num_cpus=0.5",
         "stages.denoise.batch_size=3", "stages.decode.num_gpus=0", "stages.decode.num_cpus=0.5",
         "stages.decode.batch_size=1"],
    )
    report = run_job(spec, progress=False)
    denoise = [a for a in report["actors"] if a["stage"] == "denoise"]
    assert len(denoise) == 2
    assert sorted(a["cuda_visible_devices"] for a in denoise) == ["0", "1"]
    assert len({a["gpu_ids"][0] for a in denoise}) == 2
    assert verify_output(str(tmp_path / "gpu"))["ok"]
    # Other batches, same samples: each sample's noise depends on its seed alone.
    import webdataset as wds

    def images(url):
        return {s["__key__"]: np.asarray(Image.open(io.BytesIO(s["png"]))).astype(int)
                for s in wds.WebDataset(OutputLayout(str(url)).tar_urls(), shardshuffle=False)}

    a, b = images(out), images(tmp_path / "gpu")
    assert a.keys() == b.keys()
    assert max(np.abs(a[k] - b[k]).max() for k in a) <= 1


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["stages.denoise.num_gpus=4"], r"stage 'denoise' asks for num_cpus=1.0, num_gpus=4.0 per actor, but no node"),
        (["stages.decode.num_cpus=3"], r"stage 'decode' asks for num_cpus=3.0"),
        (["stages.denoise.concurrency=3"], r"the stages together need 3.75 CPUs"),
    ],
)
def test_unschedulable_stages_fail_fast(ray_cluster, tmp_path, overrides, message):
    import time

    started = time.monotonic()
    with pytest.raises(SchedulingError, match=message):
        run_job(make_spec(tmp_path / "x", overrides), progress=False)
    assert time.monotonic() - started < 30


def test_stage_actors_release_their_resources_after_the_job(finished_job):
    import time

    import ray

    total = ray.cluster_resources()
    deadline = time.monotonic() + 20  # ray.kill frees resources asynchronously
    while time.monotonic() < deadline:
        free = ray.available_resources()
        if free.get("CPU") == total["CPU"] and free.get("GPU") == total["GPU"]:
            break
        time.sleep(0.2)
    assert (free.get("CPU"), free.get("GPU")) == (total["CPU"], total["GPU"])


def test_model_loaded_from_a_saved_directory_gives_the_same_images(finished_job, tmp_path):
    from pipelines.models.tiny_sdxl import build_tiny_sdxl_pipeline

    model_dir = tmp_path / "tiny-sdxl"
    build_tiny_sdxl_pipeline().save_pretrained(model_dir)
    _, out, _ = finished_job
    spec = make_spec(tmp_path / "from-dir", model__reference=str(model_dir))
    run_job(spec, progress=False)
    assert verify_output(str(tmp_path / "from-dir"))["ok"]
    # Same weights through from_pretrained: same images (the job metadata names another model).
    import webdataset as wds

    def pngs(url):
        return {s["__key__"]: s["png"] for s in wds.WebDataset(OutputLayout(str(url)).tar_urls(), shardshuffle=False)}

    assert pngs(tmp_path / "from-dir") == pngs(out)


def test_pools_scale_up_within_the_cluster_and_leave_room_for_writes(ray_cluster, tmp_path):
    # 2 CPUs: decode 0.5 + write 0.25 leave 1.25 for denoise actors of 0.5 each -> at most 2.
    spec = make_spec(
        tmp_path / "scaled",
        ["stages.denoise.num_cpus=0.5", "stages.denoise.concurrency={min: 1, max: 4}", "stages.denoise.batch_size=2",
         "stages.decode.batch_size=2"],
        # Long enough (~30 s) for a second actor to load its model and join, with margin for a
        # loaded machine (at 64 images it sometimes finished first).
        num_images=128, sampler__height=128, sampler__width=128, sampler__steps=8,
    )
    report = run_job(spec, progress=False)
    denoise = [a for a in report["actors"] if a["stage"] == "denoise"]
    assert len(denoise) == 2
    assert verify_output(str(tmp_path / "scaled"))["ok"]
