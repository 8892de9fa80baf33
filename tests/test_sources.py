"""Image sources: every kind of input planned with fixed keys, read back member by member."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image

from pipelines.errors import ConfigError
from pipelines.plan import build_plan
from pipelines.sources.fetch import UnreadableSample, read_member, read_members
from pipelines.sources.images import plan_images
from tests.conftest import REPO, s3_storage
from tests.support.jobspecs import spec_dict


def image_bytes(seed: int, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (seed * 40 % 256, seed, 255 - seed)).save(buffer, format=fmt)
    return buffer.getvalue()


def write_tar(path, samples: list[tuple[str, dict[str, bytes]]]) -> None:
    with tarfile.open(path, "w") as tar:
        for key, members in samples:
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "photos"
    files = {"b.png": image_bytes(1), "a/c.jpg": image_bytes(2, "JPEG"), "a/b.webp": image_bytes(3, "WEBP"),
             "z/deep/d.JPEG": image_bytes(4, "JPEG")}
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    (root / "notes.txt").write_text("not an image")
    return root, files


def keys_of(plan) -> list[str]:
    return [s.key for s in plan.samples()]


# -- folders ------------------------------------------------------------------------------------

def test_folder_plans_images_in_sorted_path_order_with_position_keys(folder):
    root, files = folder
    plan = plan_images(str(root), samples_per_shard=3)
    assert plan.input_format == "folder" and len(plan) == 4 and plan.num_shards == 2
    assert [s.metadata["path"] for s in plan.samples()] == ["a/b.webp", "a/c.jpg", "b.png", "z/deep/d.JPEG"]
    assert keys_of(plan) == ["000000000", "000000001", "000000002", "000000003"]
    assert plan.shard_size(0) == 3 and plan.shard_size(1) == 1
    shard = plan.shard(1)
    assert shard.name == "00001" and [s.key for s in shard.samples] == ["000000003"] and shard.samples[0].index == 3
    for sample in plan.samples():
        d = sample.as_dict()
        assert json.loads(json.dumps(d)) == d  # small and JSON-able: what stages receive
        assert read_member(d, "image") == files[sample.metadata["path"]]
    assert plan.sample(2).as_dict()["source"] == {"url": str(root / "b.png")}


def test_keys_are_stable_and_the_digest_follows_the_input(folder):
    root, _ = folder
    a, b = plan_images(str(root), samples_per_shard=2), plan_images(str(root), samples_per_shard=2)
    assert keys_of(a) == keys_of(b) and a.digest() == b.digest()
    assert plan_images(str(root), samples_per_shard=3).digest() != a.digest()  # sharding is part of it
    (root / "a" / "a.png").write_bytes(image_bytes(9))
    c = plan_images(str(root), samples_per_shard=2)
    assert c.sample(0).metadata["path"] == "a/a.png" and c.digest() != a.digest()


# -- lists --------------------------------------------------------------------------------------

def test_parquet_list_with_relative_absolute_paths_captions_and_metadata(folder, tmp_path):
    root, files = folder
    table = pa.table({
        "image": ["photos/b.png", str(root / "a" / "c.jpg"), "photos/a/b.webp"],
        "caption": ["a red square", None, "a webp"],
        "aesthetic": [5.5, 6.0, 4.25],
    })
    pq.write_table(table, tmp_path / "list.parquet")
    plan = plan_images(str(tmp_path / "list.parquet"), samples_per_shard=2)
    assert plan.input_format == "list" and keys_of(plan) == ["000000000", "000000001", "000000002"]
    samples = list(plan.samples())
    assert [s.prompt for s in samples] == ["a red square", "", "a webp"]
    assert [s.metadata for s in samples] == [{"aesthetic": 5.5}, {"aesthetic": 6.0}, {"aesthetic": 4.25}]
    assert [read_member(s.as_dict(), "image") for s in samples] == [files["b.png"], files["a/c.jpg"], files["a/b.webp"]]


def test_jsonl_list_keeps_row_order_and_skips_blank_lines(folder, tmp_path):
    root, files = folder
    lines = [{"url": "photos/z/deep/d.JPEG", "prompt": "deep"}, {"url": "photos/b.png", "prompt": "bee"}]
    (tmp_path / "list.jsonl").write_text(json.dumps(lines[0]) + "\n\n" + json.dumps(lines[1]) + "\n")
    plan = plan_images(str(tmp_path / "list.jsonl"), samples_per_shard=10, format="list")
    assert [(s.key, s.prompt) for s in plan.samples()] == [("000000000", "deep"), ("000000001", "bee")]
    first, second = read_members([s.as_dict() for s in plan.samples()], "jpg", return_errors=True)
    assert first == files["z/deep/d.JPEG"]  # .jpeg is a jpg
    assert isinstance(second, UnreadableSample) and "is a single .png file; it has no .jpg" in str(second)


# -- webdataset tars ----------------------------------------------------------------------------

@pytest.fixture
def tars(tmp_path):
    """Two foreign webdataset shards (not latentmill's): keys with directories, captions, json."""
    root = tmp_path / "wds"
    root.mkdir()
    shards = {
        "part-000.tar": [("cats/001", {"jpg": image_bytes(1, "JPEG"), "txt": b"a cat", "json": b'{"w": 8}'}),
                         ("cats/002", {"png": image_bytes(2), "txt": b"another cat"})],
        "part-001.tar": [("dogs/001", {"webp": image_bytes(3, "WEBP"), "cls": b"7"})],
    }
    for name, samples in shards.items():
        write_tar(root / name, samples)
    return root, {key: members for samples in shards.values() for key, members in samples}


@pytest.mark.parametrize("form", ["directory", "braces", "list"])
def test_tar_shards_keep_their_keys_and_every_member_is_range_readable(tars, form):
    root, expected = tars
    url = {"directory": str(root), "braces": f"{root}/part-{{000..001}}.tar",
           "list": f"{root}/part-000.tar :: {root}/part-001.tar"}[form]
    plan = plan_images(url, samples_per_shard=2)
    assert plan.input_format == "webdataset"
    assert keys_of(plan) == ["cats/001", "cats/002", "dogs/001"]
    assert [s.prompt for s in plan.samples()] == ["a cat", "another cat", ""]  # .txt is the caption
    for sample in plan.samples():
        d = sample.as_dict()
        assert d["source"]["url"].endswith(".tar") and set(d["source"]["members"]) == set(expected[sample.key])
        for ext, data in expected[sample.key].items():
            assert read_member(d, ext) == data
    images = read_members([s.as_dict() for s in plan.samples()], "image")
    assert images == [expected["cats/001"]["jpg"], expected["cats/002"]["png"], expected["dogs/001"]["webp"]]


def test_a_single_tar_and_a_missing_member(tars):
    root, _ = tars
    plan = plan_images(str(root / "part-001.tar"), samples_per_shard=8)
    assert keys_of(plan) == ["dogs/001"]
    with pytest.raises(UnreadableSample, match=r"sample dogs/001 in .*part-001.tar has no .txt member \(it has: webp, cls\)"):
        read_member(plan.sample(0).as_dict(), "txt")


def test_duplicate_keys_across_shards_are_refused(tars):
    root, _ = tars
    write_tar(root / "part-002.tar", [("cats/002", {"png": image_bytes(5)})])
    with pytest.raises(ConfigError, match=r"input.url: .*key 'cats/002' appears more than once \(in .*part-000.tar and .*part-002.tar\)"):
        plan_images(str(root), samples_per_shard=2)


def test_data_changed_after_planning_is_an_unreadable_sample_not_a_crash(tars):
    root, _ = tars
    plan = plan_images(str(root), samples_per_shard=2)
    tar = root / "part-000.tar"
    tar.write_bytes(tar.read_bytes()[:1000])  # truncated inside the first sample's image
    with pytest.raises(UnreadableSample, match=r"sample cats/001: .*part-000.tar is truncated"):
        read_member(plan.sample(0).as_dict(), "jpg")
    tar.unlink()
    results = read_members([s.as_dict() for s in plan.samples()], "image", return_errors=True)
    assert [type(r) for r in results] == [UnreadableSample, UnreadableSample, bytes]
    assert "part-000.tar does not exist" in str(results[0])


# -- table(): what plan.parquet holds, for any plan ---------------------------------------------

def test_both_plans_give_their_plan_parquet_rows(folder, tmp_path):
    root, _ = folder
    images = plan_images(str(root), samples_per_shard=3)
    prompts = build_plan(["a", "b"], images_per_prompt=2, num_images=5, seed=3, samples_per_shard=2)
    for plan in (images, prompts):
        with pq.ParquetWriter(tmp_path / "plan.parquet", plan.table(0, 2).schema) as writer:
            for start in range(0, len(plan), 2):
                writer.write_table(plan.table(start, start + 2))
        written = pq.read_table(tmp_path / "plan.parquet")
        assert written.column("key").to_pylist() == keys_of(plan)
        assert written.column("shard").to_pylist() == [i // plan.samples_per_shard for i in range(len(plan))]
    assert written.column("seed").to_pylist() == [3, 4, 5, 6, 7]
    assert images.table(0, 10).column("source").to_pylist()[2] == str(root / "b.png")
    assert images.table(3, 10).column("shard").to_pylist() == [1]


# -- bad inputs ---------------------------------------------------------------------------------

def config_error(url, **kwargs) -> str:
    with pytest.raises(ConfigError) as info:
        plan_images(url, samples_per_shard=4, **kwargs)
    return str(info.value)


def test_bad_inputs_are_clear_config_errors(tmp_path, folder):
    root, _ = folder
    assert "input.url: an image source is needed" in config_error(None)
    assert "input.url: an image source is needed" in config_error("  ")
    assert f"input.url: '{tmp_path}/nowhere' does not exist" in config_error(str(tmp_path / "nowhere"))
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "sub" / "readme.md").write_text("no images here")
    assert "no images found under" in config_error(str(tmp_path / "empty"))
    assert "input.format: unsupported format 'zip'" in config_error(str(root), format="zip")
    assert "not a directory (input.format folder)" in config_error(str(root / "b.png"), format="folder")
    pq.write_table(pa.table({"file": ["x.png"], "caption": ["c"]}), tmp_path / "nopath.parquet")
    message = config_error(str(tmp_path / "nopath.parquet"))
    assert "no image path column; expected one of image, path, url (columns: file, caption)" in message
    pq.write_table(pa.table({"path": ["x.png", None]}), tmp_path / "hole.parquet")
    assert "hole.parquet: row 1 has no 'path'" in config_error(str(tmp_path / "hole.parquet"))
    pq.write_table(pa.table({"path": pa.array([], pa.string())}), tmp_path / "none.parquet")
    assert "no images found" in config_error(str(tmp_path / "none.parquet"))
    (tmp_path / "bad.jsonl").write_text('{"image": "a.png"}\n\n{"image": "b.png"}\n{"image": "c.png", oops}\n')
    assert f"input.url: {tmp_path}/bad.jsonl:4: not valid JSON" in config_error(str(tmp_path / "bad.jsonl"))
    (tmp_path / "array.jsonl").write_text('{"image": "a.png"}\n["b.png"]\n')
    assert "array.jsonl:2: expected a JSON object per line, got list" in config_error(str(tmp_path / "array.jsonl"))
    (tmp_path / "fake.tar").write_bytes(b"this is not a tar file at all" * 40)
    assert "fake.tar is not a readable tar file" in config_error(str(tmp_path / "fake.tar"))
    assert "part-{000..001}.tar does not exist" not in config_error(str(tmp_path / "part-{000..001}.tar"))
    assert "part-000.tar does not exist" in config_error(str(tmp_path / "part-{000..001}.tar"))
    (tmp_path / "notes.csv").write_text("image\nx.png\n")
    assert "is a file, but neither a .tar nor a .parquet/.jsonl list" in config_error(str(tmp_path / "notes.csv"))


# -- latentmill's own output, local and on S3 -----------------------------------------------------

@pytest.fixture(scope="module")
def generated(ray_cluster, tmp_path_factory):
    """A real latentmill output (tiny model, latents kept), with one failed sample in its manifests."""
    from jobs.local import run_job
    from jobs.spec import parse_spec
    from pipelines.faults import Fault

    out = tmp_path_factory.mktemp("sources") / "generated"
    spec = parse_spec(yaml.safe_dump(spec_dict(out, num_images=10, output__samples_per_shard=4)),
                      overrides=["output.save_latents=true", "stages.max_retries=0"])
    run_job(spec, progress=False, faults=(Fault.parse("denoise:raise:000000005"),))
    return out


def test_latentmill_output_round_trip(generated):
    from pipelines.readers import webdataset

    plan = plan_images(str(generated), samples_per_shard=3)
    assert plan.input_format == "latentmill"
    read_back = {s["__key__"]: s for s in webdataset(str(generated))}
    manifests = pa.concat_tables([pq.read_table(p) for p in sorted((generated / "shards").glob("*.parquet"))],
                                 promote_options="permissive")
    ok = manifests.filter(pa.compute.equal(manifests.column("status"), "ok"))
    # Keys and prompts of the committed samples, in order; the failed sample has no data to plan.
    assert keys_of(plan) == ok.column("key").to_pylist() == list(read_back)
    assert "000000005" not in keys_of(plan) and len(plan) == 9 and plan.num_shards == 3
    assert [s.prompt for s in plan.samples()] == ok.column("prompt").to_pylist()
    for sample in plan.samples():
        d = sample.as_dict()
        assert d["metadata"]["seed"] == 7 + int(sample.key) and d["metadata"]["width"] == 64
        assert set(d["source"]["members"]) == {"png", "txt", "json", "latent.npy"}
        stored = read_back[sample.key]
        assert read_member(d, "png") == read_member(d, "image") == stored["png"]
        assert read_member(d, "txt").decode() == sample.prompt
        latents = np.load(io.BytesIO(read_member(d, "latent.npy")))
        assert latents.shape == (4, 8, 8) and np.array_equal(latents, np.load(io.BytesIO(stored["latent.npy"])))


def test_latentmill_output_on_s3_is_planned_without_listing_and_read_by_range(generated, s3_server, tmp_path):
    import fsspec

    from pipelines.config import StorageConfig

    storage = StorageConfig(**s3_storage(s3_server))
    url = "s3://latentmill/sources/generated"
    fs = fsspec.filesystem("s3", **_s3_options(storage))
    fs.put(str(generated) + "/", url.removeprefix("s3://"), recursive=True)
    local = plan_images(str(generated), samples_per_shard=4)
    remote = plan_images(url, samples_per_shard=4, storage=storage)
    assert remote.input_format == "latentmill" and keys_of(remote) == keys_of(local)
    first = remote.sample(0).as_dict()
    assert first["source"]["url"] == f"{url}/shards/00000.tar"
    assert first["source"]["members"] == local.sample(0).as_dict()["source"]["members"]
    datas = read_members([s.as_dict() for s in remote.samples()], "latent.npy", storage)
    assert datas == read_members([s.as_dict() for s in local.samples()], "latent.npy")

    # A list on S3 whose relative paths point at images next to it.
    fs.pipe("latentmill/sources/list/img/one.png", image_bytes(1))
    fs.pipe("latentmill/sources/list/img/two.png", image_bytes(2))
    buffer = io.BytesIO()
    pq.write_table(pa.table({"path": ["img/two.png", "img/one.png"], "prompt": ["two", "one"]}), buffer)
    fs.pipe("latentmill/sources/list/list.parquet", buffer.getvalue())
    plan = plan_images("s3://latentmill/sources/list/list.parquet", samples_per_shard=4, storage=storage)
    assert [s.as_dict()["source"]["url"] for s in plan.samples()] == [
        "s3://latentmill/sources/list/img/two.png", "s3://latentmill/sources/list/img/one.png"]
    assert read_members([s.as_dict() for s in plan.samples()], "image", storage) == [image_bytes(2), image_bytes(1)]
    folder = plan_images("s3://latentmill/sources/list/img", samples_per_shard=4, storage=storage)
    assert folder.input_format == "folder" and [s.metadata["path"] for s in folder.samples()] == ["one.png", "two.png"]


def _s3_options(storage) -> dict:
    from pipelines.sinks.storage import storage_options

    return storage_options("s3://latentmill", storage)


# -- scale: planning a million list entries ------------------------------------------------------

def test_planning_a_million_list_entries_stays_under_300_mb(tmp_path):
    """The issue's bound for a 1M-image dry run, measured in a fresh process (`latentmill bench sources`)."""
    from jobs.bench.sources import measure, write_list

    result = measure(write_list(str(tmp_path), 1_000_000, "parquet"))
    assert result["samples"] == result["rows"] == 1_000_000 and result["last_key"] == "000999999"
    assert result["peak_mb"] < 300, result


def test_dry_run_of_a_million_image_encode_job_stays_under_300_mb(tmp_path):
    """The same bound for the command a user runs: `latentmill run SPEC --dry-run` plans the job
    without importing Ray or the models (stages are named by path), in a process of its own."""
    import subprocess
    import sys

    from jobs.bench.sources import write_list

    listing = write_list(str(tmp_path), 1_000_000, "parquet")
    spec = tmp_path / "encode.yaml"
    spec.write_text(yaml.safe_dump({"name": "million", "kind": "encode", "input": {"url": listing},
                                    "output": {"url": str(tmp_path / "out"), "samples_per_shard": 1000}}))
    # The CLI's own main(), then this process's peak RSS: VmHWM, which starts afresh at exec
    # (getrusage's ru_maxrss would include the forked test runner's size).
    program = ("import re, sys; from jobs.cli import main; code = main(sys.argv[1:]); "
               "hwm = re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1); "
               "print('peak_kb', hwm, file=sys.stderr); sys.exit(code)")
    result = subprocess.run([sys.executable, "-c", program, "run", str(spec), "--dry-run"],
                            cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "samples: 1000000 (keys 000000000..000999999)" in result.stdout
    peak_mb = int(result.stderr.split("peak_kb")[-1].split()[0]) / 1024
    assert peak_mb < 300, peak_mb
