"""Video jobs (kind: generate-video) end to end on a real local Ray with the tiny SVD: mp4 shards
opened with PyAV, chunked decoding, conditioning images from image sources, eval and bad input.
Driver and actor kills are the shared, kind-parametrised tests (test_resume_after_kill, test_storage)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import av
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from PIL import Image

import decoders
from jobs.cli import main as cli_main
from jobs.local import run_job
from jobs.spec import parse_spec
from pipelines.errors import ConfigError
from pipelines.readers import webdataset
from pipelines.sinks.layout import OutputLayout
from pipelines.verify import verify_output
from tests.conftest import REPO
from tests.support.jobspecs import VIDEO_BASE, changed, spec_dict

EXAMPLE = os.path.join(REPO, "jobs", "examples", "video-quickstart.yaml")
SIZE, FRAMES = 64, 8

def video_dict(output_url, **changes) -> dict:
    return changed(VIDEO_BASE, output_url, **changes)


def parse(data: dict):
    return parse_spec(yaml.safe_dump(data), source="video.yaml")


def cli(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "jobs.cli", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


def manifest_rows(url) -> list[dict]:
    return [row for path in sorted((OutputLayout(str(url)).fs.glob(f"{url}/shards/*.parquet")))
            for row in pq.read_table(path).to_pylist()]


def opened_with_pyav(data: bytes) -> dict:
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
        return {"frames": len(frames), "width": stream.codec_context.width, "height": stream.codec_context.height,
                "fps": float(stream.average_rate), "codec": stream.codec_context.name,
                "pix_fmt": stream.codec_context.pix_fmt, "pixels": np.stack(frames)}


# -- the example, through the command line ------------------------------------------------------------

def test_video_quickstart_writes_clips_that_pyav_opens_as_the_manifest_says(ray_cluster, tmp_path, capsys):
    out = tmp_path / "video-quickstart"
    run = cli("run", EXAMPLE, "--address", ray_cluster, "--quiet", "--set", f"output.url={out}")
    assert run.returncode == 0, run.stderr[-3000:]
    verify = cli("verify", str(out), "--json")
    assert verify.returncode == 0, verify.stdout + verify.stderr
    result = json.loads(verify.stdout)
    assert result["ok"] and result["samples"] >= 8 and result["committed_shards"] >= 2, result

    rows = {r["key"]: r for r in manifest_rows(out)}
    samples = list(webdataset(str(out)))
    assert sorted(s["__key__"] for s in samples) == sorted(rows) and len(rows) >= 8
    for sample in samples:
        row, clip = rows[sample["__key__"]], opened_with_pyav(sample["mp4"])
        assert row["frames"] >= 8 and row["status"] == "ok"
        assert (clip["frames"], clip["width"], clip["height"]) == (row["frames"], row["width"], row["height"])
        assert clip["fps"] == row["fps"] == 7 and row["duration"] == pytest.approx(row["frames"] / row["fps"])
        assert (clip["codec"], clip["pix_fmt"], row["codec"]) == ("h264", "yuv420p", "h264")
        assert row["bytes"] == len(sample["mp4"])
        poster = np.asarray(Image.open(io.BytesIO(sample["poster.png"])).convert("RGB")).astype(int)
        assert np.abs(poster - clip["pixels"][0]).mean() < 12  # the first frame, before H.264
        meta = json.loads(sample["json"])
        assert meta["conditioning_key"] == sample["__key__"] and meta["seed"] == meta["index"]  # seed 0 + index
    report = json.loads((out / "report.json").read_text())
    assert report["per_item"]["frames"]["per_item"] == 8 and report["per_item"]["frames"]["per_s"] > 0
    assert report["units"]["plural"] == "clips" and report["stage_names"][-1] == "write"
    assert "frames/s" in (out / "report.md").read_text()
    # The example keeps no latents: there is nothing for `latentmill eval` to decode.
    capsys.readouterr()
    assert cli_main(["eval", str(out), "--decoder", "random:tae-temporal", "--out", str(tmp_path / "eval")]) == 2
    assert "output.save_latents: true" in capsys.readouterr().err


# -- latentmill eval on a video output ---------------------------------------------------------------

def clip_colour_features(clips: torch.Tensor) -> np.ndarray:
    """Stands in for an I3D network in the eval test: per clip, its mean colour per frame."""
    return clips.mean(dim=(3, 4)).flatten(1).numpy()


def test_eval_compares_video_decoders_per_frame_and_over_time(ray_cluster, tmp_path, capsys):
    out = tmp_path / "clips"
    run_job(parse(video_dict(out, output__save_latents=True)), progress=False)
    done = cli("eval", str(out), "--decoder", "random:tae-temporal", "--chunk-frames", "3",
               "--video-features", "tests.kinds.test_video:clip_colour_features", "--out", str(tmp_path / "eval"))
    assert done.returncode == 0, done.stderr[-3000:]
    # The terminal gets a table that fits 100 columns and one LPIPS line; eval.md has every column.
    assert max(len(line) for line in done.stdout.splitlines()) <= 100, done.stdout
    assert done.stdout.count("LPIPS") == 1 and "LPIPS" not in done.stderr, done.stdout + done.stderr
    result = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert (result["kind"], result["clips"], result["frames_per_clip"]) == ("video", 4, FRAMES)
    reference, light = result["rows"]
    # The reference against itself: identical frames, no excess flicker, no feature distance.
    assert (reference["psnr_db"], reference["ssim"], reference["flicker_excess"]) == ("inf", 1.0, 0.0)
    assert reference["frechet[tests.kinds.test_video:clip_colour_features]"] == pytest.approx(0, abs=1e-9)
    assert light["decoder"] == "random:tae-temporal" and light["chunk_frames"] == 3
    assert 0 < light["psnr_db"] < 40 and light["ssim"] < 1 and light["flicker_light"] > 0
    assert light["flicker_excess"] == pytest.approx(light["flicker_light"] - light["flicker_reference"])
    assert light["frechet[tests.kinds.test_video:clip_colour_features]"] > 0
    assert light["seconds_per_frame"] > 0 and light["parameters"] > 0
    markdown = (tmp_path / "eval" / "eval.md").read_text()
    assert "flicker_excess" in markdown and "random:tae-temporal" in markdown
    assert "LPIPS: not computed" in markdown or "lpips" in light or "lpips_test_only" in light
    assert Image.open(tmp_path / "eval" / "grid.png").size[0] >= 2 * SIZE

    # An image decoder cannot decode clips; without a feature network the Fréchet column says why.
    capsys.readouterr()
    assert cli_main(["eval", str(out), "--decoder", "random:taesd", "--out", str(tmp_path / "bad")]) == 2
    assert "random:taesd decodes images; these clips need a video decoder" in capsys.readouterr().err
    assert cli_main(["eval", str(out), "--decoder", "random:tae-temporal", "--samples", "2",
                     "--out", str(tmp_path / "e2")]) == 0
    assert "Fréchet distance: not computed: FVD needs" in capsys.readouterr().out


# -- chunked decoding ------------------------------------------------------------------------------

def video_latents(clips=2, frames=FRAMES, seed=0) -> torch.Tensor:
    return torch.randn(clips, frames, 4, SIZE // 8, SIZE // 8, generator=torch.Generator().manual_seed(seed))


def test_chunked_decode_gives_the_whole_clip_decode_within_one_intensity_level():
    from pipelines.config import VideoConfig, VideoOutputConfig
    from pipelines.stages.video import VideoDecode

    latents = video_latents()
    frames = {}
    for chunk in (1, 3, None):
        video = VideoConfig(frames=FRAMES, fps=6, height=SIZE, width=SIZE, decode_chunk_size=chunk)
        stage = VideoDecode("random:tae-temporal-tiny", "tiny", video, VideoOutputConfig(url="unused"), device="cpu")
        frames[chunk] = stage.frames(latents).astype(int)
    assert frames[None].shape == (2, FRAMES, SIZE, SIZE, 3)
    assert frames[None].std() > 1  # varied pixels, not a constant image
    for chunk in (1, 3):
        assert np.abs(frames[chunk] - frames[None]).max() <= 1, chunk
    # Causal: the first frames do not depend on later latents.
    changed = latents.clone()
    changed[:, 4:] += 1.0
    dec = decoders.load("random:tae-temporal-tiny", device="cpu")
    torch.testing.assert_close(dec.decode(changed, chunk_frames=3)[:, :4], dec.decode(latents)[:, :4])


def test_decoders_without_exact_chunks_refuse_them_in_the_decoder_and_the_spec(tmp_path):
    svd = decoders.load("random:svd-vae-tiny", device="cpu")
    assert not svd.supports_chunking and decoders.lookup("random:tae-temporal").supports_chunking
    with pytest.raises(ValueError, match="cannot decode a clip in chunks"):
        svd.decode(video_latents(clips=1), chunk_frames=3)
    assert svd.decode(video_latents(clips=1), chunk_frames=FRAMES).shape == (1, FRAMES, 3, SIZE, SIZE)
    for decoder in ("svd-vae", "random:svd-vae"):
        with pytest.raises(ConfigError, match=r"video.decode_chunk_size.*cannot decode a clip in chunks"):
            parse(video_dict(tmp_path, decoder=decoder, video__decode_chunk_size=3))
    assert parse(video_dict(tmp_path, decoder="random:tae-temporal-tiny", video__decode_chunk_size=3))


# -- the model: from_pretrained directories ----------------------------------------------------------

def test_tiny_svd_runs_from_a_save_pretrained_directory_like_the_builtin(cache_dir, tmp_path):
    from pipelines.config import VideoConfig, VideoModelConfig
    from pipelines.models.tiny_svd import build_tiny_svd_pipeline
    from pipelines.sources.conditioning import render_builtin
    from pipelines.stages.video import VideoDenoise

    saved = tmp_path / "my-svd"
    build_tiny_svd_pipeline().save_pretrained(saved)
    assert (saved / "model_index.json").exists() and (saved / "unet" / "config.json").exists()
    video = VideoConfig(frames=4, fps=6, height=SIZE, width=SIZE, steps=2)
    batch = {"keys": ["a"], "samples": [{"key": "a", "seed": 5}], "pixels": render_builtin(0, SIZE, SIZE)[None]}
    latents = {ref: VideoDenoise(VideoModelConfig(reference=ref), video, device="cpu")(batch)["latents"]
               for ref in ("tiny", str(saved))}
    assert latents["tiny"].shape == (1, 4, 4, SIZE // 8, SIZE // 8)
    np.testing.assert_array_equal(latents["tiny"], latents[str(saved)])


# -- conditioning images from image sources --------------------------------------------------------

def test_clips_from_an_image_output_keep_its_keys_and_prompts(ray_cluster, tmp_path):
    images = tmp_path / "images"
    run_job(parse_spec(yaml.safe_dump(spec_dict(images, num_images=3, output__samples_per_shard=3))), progress=False)
    out = tmp_path / "clips"
    report = run_job(parse(video_dict(out, input={"url": str(images)}, video__frames=4)), progress=False)
    assert report["generated"] == 3
    assert verify_output(str(out))["ok"]
    prompts = {s["__key__"]: s["txt"] for s in webdataset(str(images))}
    clips = {s["__key__"]: s for s in webdataset(str(out))}
    assert clips.keys() == prompts.keys()
    for key, clip in clips.items():
        assert clip["txt"] == prompts[key]  # the conditioning image's prompt is the clip's caption
        assert json.loads(clip["json"])["conditioning_key"] == key
        assert opened_with_pyav(clip["mp4"])["frames"] == 4


def test_an_unreadable_conditioning_image_is_recorded_and_the_job_goes_on(ray_cluster, tmp_path):
    from pipelines.sources.conditioning import render_builtin

    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(render_builtin(i, 48, 80)).save(folder / f"good-{i}.png")  # other size: cropped
    (folder / "broken.png").write_text("not a picture")
    out = tmp_path / "clips"
    report = run_job(parse(video_dict(out, input={"url": str(folder)}, video__frames=4)), progress=False)
    assert report["failed"] == 0
    rows = manifest_rows(out)
    assert sorted(r["status"] for r in rows) == ["ok", "ok", "ok", "rejected"]
    broken = next(r for r in rows if r["status"] == "rejected")
    assert "broken.png" in broken["source"] and "not a readable image" in broken["error"]
    assert len(list(webdataset(str(out)))) == 3


# -- bad input -----------------------------------------------------------------------------------

@pytest.mark.parametrize("changes, message", [
    ({"video__frames": 0}, r"video.frames: expected an integer >= 1, got 0"),
    ({"video__fps": 0}, r"video.fps: expected a positive integer"),
    ({"video__fps": -3}, r"video.fps: expected a positive integer"),
    ({"video__height": 60}, r"video.height: expected a positive multiple of 8"),
    ({"decoder": "sdxl-vae"}, r"decoder.*'sdxl-vae' is an image decoder; a video job needs a video decoder"),
    ({"decoder": "random:taesd"}, r"decoder.*'random:taesd' is an image decoder"),
    ({"input": {"builtin": 2, "url": "/tmp"}}, r"give exactly one of input.url or input.builtin"),
    ({"input": {}}, r"give exactly one of input.url or input.builtin"),
    ({"model": {"family": "sdxl"}}, r"model.family"),
])
def test_bad_video_specs_are_clear_errors(tmp_path, changes, message):
    with pytest.raises(ConfigError, match=message):
        parse(video_dict(tmp_path, **changes))


@pytest.mark.parametrize("decoder", ["random:tae-temporal", "random:svd-vae-tiny"])
def test_a_video_decoder_in_an_image_job_is_a_clear_error(tmp_path, decoder):
    with pytest.raises(ConfigError, match=rf"decoder.*'{decoder}' is a video decoder; an image job needs an image decoder"):
        parse_spec(yaml.safe_dump(spec_dict(tmp_path, decoder=decoder)))


def test_a_bad_spec_exits_2_naming_the_field(tmp_path):
    path = tmp_path / "video.yaml"
    path.write_text(yaml.safe_dump(video_dict(tmp_path / "out", video__fps=0)))
    run = cli("run", str(path), "--dry-run")
    assert run.returncode == 2 and "video.fps" in run.stderr and "Traceback" not in run.stderr

