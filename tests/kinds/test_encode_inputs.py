"""Awkward inputs of an image folder: planned with stable keys, read faithfully or rejected with a
sentence; and one encode job over all of them, checked in its stored pixels and manifest rows."""

from __future__ import annotations

import io
import json
import os
import re

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image

from jobs.kinds import video
from jobs.spec import parse_spec
from pipelines.config import ImageConfig
from pipelines.errors import ConfigError, OutputConflict
from pipelines.readers import webdataset
from pipelines.sources.images import plan_images
from pipelines.stages.read import ReadImages
from tests.support.imagefiles import (
    adobe_like_profile,
    adobe_to_srgb,
    claimed_png,
    landscape_jpeg,
    png16,
    saved,
    three_frames,
)
from tests.support.jobspecs import encode_spec_dict, kind_spec_dict

SIZE = 64
BACKGROUND = (16, 32, 48)  # the spec's input.background, #102030
REPR = re.compile(r"<[^>]* at 0x|object at|0x[0-9a-f]{6,}")
GRADIENT16 = np.tile(np.rint(np.linspace(0, 65535, SIZE)).astype(np.uint16), (SIZE, 1))
RAMP16 = np.tile(np.arange(0, 65536, 1021, dtype=np.uint16)[:SIZE], (SIZE, 1))  # its low bytes matter


def awkward_folder(root) -> dict[str, str]:
    """Writes the folder; returns {file name: what must become of it}."""
    root.mkdir(parents=True)
    (root / "a-gradient16.png").write_bytes(saved(Image.fromarray(GRADIENT16), "PNG"))
    (root / "a-rgb16.png").write_bytes(png16(np.stack([RAMP16, RAMP16, 65535 - RAMP16], -1), 2))
    (root / "b-portrait.jpg").write_bytes(landscape_jpeg(6, width=SIZE, height=SIZE // 2))
    (root / "c-adobe.png").write_bytes(saved(Image.new("RGB", (SIZE, SIZE), (60, 160, 90)), "PNG",
                                             icc_profile=adobe_like_profile()))
    (root / "d-transparent.png").write_bytes(saved(Image.new("RGBA", (SIZE, SIZE), (0, 0, 255, 0)), "PNG"))
    (root / "e-animated.gif").write_bytes(three_frames("GIF", size=SIZE))
    (root / "f-huge.png").write_bytes(claimed_png(9000, 8000))
    os.mkfifo(root / "g-fifo.png")
    os.symlink("missing.png", root / "h-dangling.png")
    os.symlink("i-loop.png", root / "i-loop.png")
    os.symlink(".", root / "l-folder-link.png")  # a directory named like an image
    (root / "j-text.png").write_text("text, not a picture")
    (root / os.fsdecode(b"k-caf\xe9.png")).write_bytes(saved(Image.new("RGB", (SIZE, SIZE)), "PNG"))  # Latin-1 name
    return {"a-gradient16.png": "ok", "a-rgb16.png": "ok", "b-portrait.jpg": "ok", "c-adobe.png": "ok", "d-transparent.png": "ok",
            "e-animated.gif": "ok", "f-huge.png": "9000x8000 (72,000,000 pixels), over input.max_pixels",
            "g-fifo.png": "is not a regular file", "h-dangling.png": "symbolic link to a file that does not exist",
            "i-loop.png": "symbolic link loop", "j-text.png": "not a readable image (no format Pillow knows",
            "k-caf\\xe9.png": "file name is not valid UTF-8", "l-folder-link.png": "is a directory, not an image file"}


# -- planning and reading, without Ray ------------------------------------------------------------

def test_awkward_files_are_planned_with_stable_keys_and_read_or_rejected_with_a_sentence(tmp_path):
    expected = awkward_folder(tmp_path / "in")
    plans = [plan_images(str(tmp_path / "in"), samples_per_shard=4) for _ in range(2)]
    paths = [[s.metadata["path"] for s in plan.samples()] for plan in plans]
    assert paths[0] == paths[1] == sorted(expected) and plans[0].digest() == plans[1].digest()
    samples = [s.as_dict() for s in plans[0].samples()]
    batch = ReadImages(ImageConfig(SIZE, SIZE), background="#102030")({"keys": [s["key"] for s in samples], "samples": samples})
    by_path = {s["metadata"]["path"]: s["key"] for s in samples}
    for path, outcome in expected.items():
        key = by_path[path]
        if outcome == "ok":
            assert key in batch["keys"] and key in batch["input_facts"], path
        else:
            reason = batch["rejected"][key]
            assert outcome in reason and not REPR.search(reason), (path, reason)


def test_a_plain_folders_plan_is_unchanged(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.png").write_bytes(saved(Image.new("RGB", (8, 8)), "PNG"))
    plan = plan_images(str(tmp_path / "in"), samples_per_shard=4)
    assert plan.rows.column_names == ["key", "prompt", "location", "metadata"]  # no `rejected` column: same digest
    assert "rejected" not in plan.sample(0).as_dict()["source"]


@pytest.mark.parametrize("field, value, expected", [
    ("input__background", "nocolour", "input.background: expected a colour name (e.g. white) or #rrggbb"),
    ("input__background", "#12345", "input.background"),
    ("input__max_pixels", 0, "input.max_pixels: expected a positive number of pixels"),
])
def test_input_fields_are_checked_with_a_line_naming_them(tmp_path, field, value, expected):
    for kind in ("encode", "generate-video"):
        data = kind_spec_dict(kind, tmp_path / "out", photos=tmp_path, **{field: value})
        with pytest.raises(ConfigError, match=re.escape(expected)):
            parse_spec(yaml.safe_dump(data), source="test.yaml")


def test_input_rules_are_part_of_the_identity_only_when_not_the_defaults(tmp_path):
    def identity(kind, **changes):
        data = kind_spec_dict(kind, tmp_path / "out", photos=tmp_path, **changes)
        return parse_spec(yaml.safe_dump(data), source="test.yaml").identity()

    for kind in ("encode", "generate-video"):
        assert "pixels" not in identity(kind)  # outputs made before these rules resume as before
        assert identity(kind, input__background="#FFFFFF") == identity(kind)
        assert identity(kind, input__background="black")["pixels"]["background"] == "#000000"
        assert identity(kind, input__max_pixels=10)["pixels"]["max_pixels"] == 10


def test_video_conditioning_reads_images_by_the_same_rules(tmp_path):
    data = kind_spec_dict("generate-video", tmp_path / "out", input__builtin=None, input__url=str(tmp_path),
                          input__background="#102030", input__max_pixels=1000)
    spec = parse_spec(yaml.safe_dump(data), source="test.yaml")
    (tmp_path / "x.png").write_bytes(saved(Image.new("RGBA", (8, 8), (0, 0, 255, 0)), "PNG"))
    read = video.pipeline(spec, video.plan(spec)).stages[0]
    assert read.cls == "pipelines.stages.read:ReadImages"
    stage = ReadImages(**read.kwargs)
    sample = video.plan(spec).sample(0).as_dict()
    batch = stage({"keys": [sample["key"]], "samples": [sample]})
    assert (batch["pixels"] == BACKGROUND).all() and batch["input_facts"][sample["key"]]["input_alpha"] is True


# -- one encode job over all of them ---------------------------------------------------------------

def test_an_encode_job_stores_faithful_pixels_and_says_what_it_did_to_each_input(ray_cluster, tmp_path):
    from jobs.local import run_job

    expected = awkward_folder(tmp_path / "in")
    out = tmp_path / "out"
    spec = parse_spec(yaml.safe_dump(encode_spec_dict(tmp_path / "in", out, input__background="#102030")), source="t.yaml")
    report = run_job(spec, progress=False)
    assert report["failed"] == 0
    rows = {json.loads(r["metadata"])["path"]: r for path in sorted((out / "shards").glob("*.parquet"))
            for r in pq.read_table(path).to_pylist()}
    assert set(rows) == set(expected)
    for path, outcome in expected.items():
        row = rows[path]
        if outcome == "ok":
            assert row["status"] == "ok", (path, row["error"])
        else:
            assert row["status"] == "rejected" and outcome in row["error"] and not REPR.search(row["error"]), (path, row)
    stored = {json.loads(s["json"])["metadata"]["path"]: s for s in webdataset(str(out))}
    pixels = {path: np.asarray(Image.open(io.BytesIO(s["png"]))).astype(int) for path, s in stored.items()}
    exact = np.rint(np.linspace(0, 65535, SIZE) * 255 / 65535)
    assert (pixels["a-gradient16.png"][5, :, 0] == exact).all()  # a gradient, not white
    assert (pixels["a-rgb16.png"][5, :, 2] == np.rint((65535 - RAMP16[0].astype(float)) * 255 / 65535)).all()
    portrait = pixels["b-portrait.jpg"]  # red on top once turned upright (on the left as stored)
    assert portrait[8, 56, 0] > 200 and portrait[56, 8, 2] > 200
    assert np.abs(pixels["c-adobe.png"][32, 32] - adobe_to_srgb((60, 160, 90))).max() <= 3
    assert (pixels["d-transparent.png"] == BACKGROUND).all()
    assert (pixels["e-animated.gif"][32, 32] == (255, 0, 0)).all()
    facts = {path: {k: v for k, v in row.items() if k.startswith("input_")} for path, row in rows.items()}
    assert facts["e-animated.gif"]["input_frames"] == 3 and facts["e-animated.gif"]["input_frame_used"] == 0
    assert facts["a-gradient16.png"]["input_mode"] == "I;16" and facts["b-portrait.jpg"]["input_orientation"] == 6
    assert facts["c-adobe.png"]["input_icc"] == "Adobe-like test RGB" and facts["d-transparent.png"]["input_alpha"]
    assert json.loads(stored["e-animated.gif"]["json"])["input_frames"] == 3  # in the sample's .json too
    # Another background would make other pixels: the output is not resumed with it.
    other = parse_spec(yaml.safe_dump(encode_spec_dict(tmp_path / "in", out, input__background="black")), source="t.yaml")
    with pytest.raises(OutputConflict, match=re.escape("pixels.background ('#102030' -> '#000000')")):
        run_job(other, progress=False)
