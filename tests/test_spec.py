"""Job spec validation: every bad input gets an error naming the file, line or field and what was expected."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import yaml

from jobs.cli import main as cli_main
from jobs.local import plan_for
from jobs.spec import load_spec, parse_spec
from pipelines.errors import ConfigError
from tests.support.jobspecs import spec_dict, write_spec

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse(spec: dict, overrides=()):
    return parse_spec(yaml.safe_dump(spec, sort_keys=False), source="job.yaml", overrides=list(overrides))


def error_of(spec: dict, overrides=()) -> str:
    with pytest.raises(ConfigError) as info:
        parse(spec, overrides)
    return str(info.value)


def test_quickstart_example_is_valid_and_plans_enough():
    spec = load_spec(os.path.join(REPO, "jobs/examples/quickstart.yaml"))
    plan = plan_for(spec)
    assert len(plan) >= 64 and plan.num_shards >= 2
    assert spec.stages.decode.num_cpus == 0.5  # partial stage mappings keep the other defaults


def test_partial_stage_mapping_keeps_stage_defaults(tmp_path):
    spec = parse(spec_dict(tmp_path / "o", stages={"decode": {"batch_size": 2}}))
    assert spec.stages.decode.batch_size == 2
    assert spec.stages.decode.num_cpus == 0.5 and spec.stages.denoise.num_cpus == 1.0


def test_decode_batch_larger_than_denoise_batch_is_refused(tmp_path):
    message = error_of(spec_dict(tmp_path / "o"), ["stages.decode.batch_size=8"])
    assert "stages.decode.batch_size: expected at most stages.denoise.batch_size (4)" in message


def test_plan_is_deterministic_and_seeds_come_from_the_index(tmp_path):
    spec = parse(spec_dict(tmp_path / "o", num_images=10, seed=100))
    a, b = plan_for(spec), plan_for(spec)
    assert a.digest() == b.digest()
    assert [s.seed for s in a.samples()] == list(range(100, 110))
    assert [a.sample(0).key, a.sample(1).key] == ["000000000", "000000001"]
    # 3 prompts x 4 images each, consecutive: sample 4 is the second prompt's first image.
    assert a.sample(4).prompt == "a blue whale"


def test_set_overrides_fields_with_yaml_types(tmp_path):
    spec = parse(spec_dict(tmp_path / "o"), ["sampler.steps=9", "output.save_latents=true", "stages.decode.concurrency={min: 1, max: 3}"])
    assert spec.sampler.steps == 9 and spec.output.save_latents is True
    assert (spec.stages.decode.min_actors, spec.stages.decode.max_actors) == (1, 3)


def test_an_error_in_a_set_argument_names_the_argument_not_a_file_line(tmp_path):
    message = error_of(spec_dict(tmp_path / "o"), ["sampler.stepz=3"])
    assert message.startswith("--set sampler.stepz=3: sampler.stepz: unknown field"), message
    message = error_of(spec_dict(tmp_path / "o"), ["output.save_latents=true", "prompts.inline=['a fox', '']"])
    assert message.startswith("--set prompts.inline=['a fox', '']: prompts.inline[1]: expected"), message
    assert error_of(spec_dict(tmp_path / "o", seed=-1), ["sampler.steps=3"]).startswith("job.yaml:")


def test_malformed_yaml_names_its_line():
    with pytest.raises(ConfigError) as info:
        parse_spec("name: x\nsampler:\n  steps: [1, 2\n  width: 64\n", source="bad.yaml")
    assert "bad.yaml:" in str(info.value) and "malformed YAML" in str(info.value)
    line = int(str(info.value).split("bad.yaml:")[1].split(":")[0])
    assert line in (3, 4)


def test_unknown_field_is_named_with_its_line(tmp_path):
    text = yaml.safe_dump(spec_dict(tmp_path / "o"), sort_keys=False).replace("  steps: 2", "  stepz: 2")
    with pytest.raises(ConfigError) as info:
        parse_spec(text, source="job.yaml")
    message = str(info.value)
    expected_line = text.splitlines().index("  stepz: 2") + 1
    assert f"job.yaml:{expected_line}: sampler.stepz: unknown field" in message
    assert "steps" in message  # lists the known fields


@pytest.mark.parametrize(
    "change, field, expected",
    [
        ({"sampler": {"steps": "ten"}}, "sampler.steps", "an integer"),
        ({"sampler": {"guidance_scale": [1]}}, "sampler.guidance_scale", "a number"),
        ({"output": {"url": "x", "save_latents": "yes"}}, "output.save_latents", "true or false"),
        ({"num_images": 2.5}, "num_images", "an integer"),
        ({"output": {"url": "x", "image_format": "bmp"}}, "output.image_format", "one of 'png', 'jpg', 'webp'"),
        ({"stages": {"denoise": {"num_gpus": "many"}}}, "stages.denoise.num_gpus", "'auto'"),
    ],
)
def test_wrong_types_name_field_and_expectation(tmp_path, change, field, expected):
    spec = spec_dict(tmp_path / "o")
    for key, value in change.items():
        spec[key] = {**spec[key], **value} if isinstance(value, dict) and isinstance(spec.get(key), dict) else value
    message = error_of(spec)
    assert f"{field}: expected" in message and expected in message


@pytest.mark.parametrize(
    "dotted, value, field",
    [
        ("num_images", 0, "num_images"),
        ("num_images", -5, "num_images"),
        ("sampler__steps", 0, "sampler.steps"),
        ("prompts__images_per_prompt", 0, "prompts.images_per_prompt"),
        ("output__samples_per_shard", -1, "output.samples_per_shard"),
        ("stages__denoise__batch_size", 0, "stages.denoise.batch_size"),
        ("stages__decode__concurrency", 0, "stages.decode.concurrency"),
        ("stages__write__concurrency", 0, "stages.write.concurrency"),
    ],
)
def test_zero_or_negative_counts_are_refused(tmp_path, dotted, value, field):
    message = error_of(spec_dict(tmp_path / "o", **{dotted: value}))
    assert f"{field}: expected a positive integer" in message


@pytest.mark.parametrize(
    "text, overrides, message",
    [
        # Seeds are int64 (plan.parquet, torch generators): 2^63 used to be accepted and then fail every sample.
        (None, ["seed=9223372036854775808"], "seed: expected an integer from 0 to 9223372036854775807 (2^63 - 1)"),
        # seed + i for the last sample passes int64 too.
        (None, ["seed=9223372036854775800"], "seed: 9223372036854775800 + 24 samples passes 9223372036854775807"),
        (None, ["prompts.inline=['a fox', '']"], "prompts.inline[1]: expected a non-empty prompt"),
        (None, ["prompts.inline=['   ']"], "prompts.inline[0]: expected a non-empty prompt"),
        (None, ["output.samples_per_shard=10001"], "output.samples_per_shard: expected a positive integer up to 10,000 "
                                                    "(a write task holds its whole shard in memory)"),
        (None, ["stages.denoise.num_cpus=.inf"], "stages.denoise.num_cpus: expected a finite number >= 0, got inf"),
        (None, ["stages.decode.num_gpus=.inf"], "stages.decode.num_gpus: expected a finite number >= 0 or 'auto', got inf"),
        (None, ["stages.write.num_cpus=.inf"], "stages.write.num_cpus: expected a finite number >= 0, got inf"),
        (None, ["sampler.guidance_scale=.inf"], "sampler.guidance_scale: expected a finite number >= 0, got inf"),
        (None, ["output.storage.timeout_s=.inf"], "output.storage.timeout_s: expected a positive number of seconds"),
        (None, ["output.lease_ttl_s=0.5"], "output.lease_ttl_s: expected a number of seconds >= 1"),
    ],
)
def test_values_that_used_to_pass_and_fail_later_are_refused(tmp_path, text, overrides, message):
    assert message in error_of(spec_dict(tmp_path / "o"), overrides)


def test_cli_exit_codes_for_spec_errors(tmp_path):
    bad = write_spec(tmp_path / "bad.yaml", tmp_path / "o", seed=2**63)
    done = subprocess.run([sys.executable, "-m", "jobs.cli", "run", bad], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 2 and "seed: expected an integer from 0" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("dotted", ["sampler__height", "sampler__width"])
def test_size_must_be_a_multiple_of_the_latent_factor(tmp_path, dotted):
    message = error_of(spec_dict(tmp_path / "o", **{dotted: 100}))
    assert f"{dotted.replace('__', '.')}: expected a positive multiple of 8" in message and "100" in message


def test_unknown_decoder(tmp_path):
    message = error_of(spec_dict(tmp_path / "o", decoder="fastvae"))
    assert "decoder: unknown decoder 'fastvae'" in message and "taesd" in message


def test_missing_decoder_checkpoint(tmp_path):
    message = error_of(spec_dict(tmp_path / "o", decoder=str(tmp_path / "nope.safetensors")))
    assert "decoder: decoder checkpoint" in message and "does not exist" in message


def test_model_path_that_does_not_exist(tmp_path):
    message = error_of(spec_dict(tmp_path / "o", model__reference=str(tmp_path / "no-such-model")))
    assert "model.reference: model directory" in message and "does not exist" in message


def test_model_directory_without_model_index(tmp_path):
    (tmp_path / "empty-model").mkdir()
    message = error_of(spec_dict(tmp_path / "o", model__reference=str(tmp_path / "empty-model")))
    assert "model_index.json" in message


def test_unknown_output_protocol(tmp_path):
    message = error_of(spec_dict("nosuchproto://bucket/prefix"))
    assert "output.url: unknown protocol 'nosuchproto'" in message


def test_inline_and_file_prompts_are_exclusive(tmp_path):
    message = error_of(spec_dict(tmp_path / "o", prompts={"inline": ["a"], "file": "p.txt"}))
    assert "prompts" in message and "exactly one" in message


def _spec_with_prompt_file(tmp_path, content: bytes, name="prompts.txt"):
    prompt_file = tmp_path / name
    prompt_file.write_bytes(content)
    return parse(spec_dict(tmp_path / "o", prompts={"file": str(prompt_file), "images_per_prompt": 4}, num_images=None))


def test_prompt_files_txt_jsonl_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    spec = _spec_with_prompt_file(tmp_path, b"a cat\n\nthe moon \n")
    assert [s.prompt for s in plan_for(spec).samples()] == ["a cat"] * 4 + ["the moon"] * 4
    spec = _spec_with_prompt_file(tmp_path, b'{"prompt": "a cat"}\n{"prompt": "the moon"}\n', "p.jsonl")
    assert len(plan_for(spec)) == 8
    pq.write_table(pa.table({"prompt": ["x", "y", "z"]}), tmp_path / "p.parquet")
    spec = parse(spec_dict(tmp_path / "o", prompts={"file": str(tmp_path / "p.parquet")}, num_images=None))
    assert [s.prompt for s in plan_for(spec).samples()] == ["x", "y", "z"]


def test_empty_prompt_file(tmp_path):
    spec = _spec_with_prompt_file(tmp_path, b"\n  \n")
    with pytest.raises(ConfigError, match=r"prompts.file: prompt file .* holds no prompts"):
        plan_for(spec)


def test_prompt_file_with_invalid_utf8_names_the_line(tmp_path):
    spec = _spec_with_prompt_file(tmp_path, b"a cat\na d\xffog\n")
    with pytest.raises(ConfigError, match=r"prompts.txt:2: not valid UTF-8 \(byte 0xff at column 4\)"):
        plan_for(spec)


def test_bad_jsonl_line(tmp_path):
    spec = _spec_with_prompt_file(tmp_path, b'{"prompt": "a"}\n{"text": "b"}\n', "p.jsonl")
    with pytest.raises(ConfigError, match=r'p.jsonl:2: expected an object with a non-empty "prompt"'):
        plan_for(spec)


def test_bad_override_syntax(tmp_path):
    assert "expected FIELD=VALUE" in error_of(spec_dict(tmp_path / "o"), ["sampler.steps"])
    assert "sampler.nope: unknown field" in error_of(spec_dict(tmp_path / "o"), ["sampler.nope=3"])


def test_cli_reports_bad_spec_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "out"
    spec_path = write_spec(tmp_path / "job.yaml", out, sampler__height=100)
    assert cli_main(["run", spec_path]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "sampler.height" in err
    assert not out.exists()


def test_cli_bad_prompt_file_writes_nothing(tmp_path, capsys):
    out = tmp_path / "out"
    (tmp_path / "p.txt").write_bytes(b"\xfe\n")
    spec_path = write_spec(tmp_path / "job.yaml", out, prompts={"file": str(tmp_path / "p.txt")})
    assert cli_main(["run", spec_path]) == 2
    assert "not valid UTF-8" in capsys.readouterr().err
    assert not out.exists()


def test_dry_run_prints_plan_and_starts_nothing(tmp_path):
    out = tmp_path / "out"
    spec_path = write_spec(tmp_path / "job.yaml", out)
    result = subprocess.run(
        [sys.executable, "-m", "jobs.cli", "run", spec_path, "--dry-run"], capture_output=True, text=True, cwd=REPO
    )
    assert result.returncode == 0, result.stderr
    assert "samples: 24" in result.stdout and "shards: 3 of up to 8" in result.stdout
    assert "denoise" in result.stdout and "batch_size=4" in result.stdout
    assert not out.exists()


def test_tiling_a_decoder_that_cannot_tile_is_a_spec_error(tmp_path):
    message = error_of(spec_dict(tmp_path / "o", decoder="random:effvit-tiny", decoder_tiling=True))
    assert "decoder_tiling" in message and "cannot decode in tiles" in message and "random:taesd" in message
    # The model's own VAE and TAESD-class decoders tile.
    for decoder in ("sdxl-vae", "random:taesd-tiny"):
        assert parse_spec(yaml.safe_dump(spec_dict(tmp_path / "o", decoder=decoder, decoder_tiling=True))).decoder_tiling


def test_the_driver_makes_local_relative_paths_absolute_and_leaves_names_and_urls(tmp_path, monkeypatch):
    from jobs.spec import with_absolute_paths

    monkeypatch.chdir(tmp_path)
    (tmp_path / "prompts.txt").write_text("a red fox\n")
    (tmp_path / "dec").mkdir()
    spec = with_absolute_paths(parse({**spec_dict("out"), "prompts": {"file": "prompts.txt"}, "decoder": "./dec"}))
    assert (spec.output.url, spec.prompts.file, spec.decoder) == (
        str(tmp_path / "out"), str(tmp_path / "prompts.txt"), str(tmp_path / "dec"))
    assert spec.model.reference == "tiny"
    named = with_absolute_paths(parse({**spec_dict("s3://bucket/out"), "decoder": "random:taesd"}))
    assert (named.output.url, named.decoder) == ("s3://bucket/out", "random:taesd")
    train = with_absolute_paths(load_spec(os.path.join(REPO, "jobs/examples/train-decoder.yaml"),
                                          ["data.urls=[enc, s3://bucket/enc]", "init_weights=~/w.safetensors"]))
    assert train.data.urls == [str(tmp_path / "enc"), "s3://bucket/enc"]
    assert train.init_weights == os.path.expanduser("~/w.safetensors")


def test_a_set_of_one_of_two_exclusive_fields_replaces_the_other(tmp_path):
    video = f"{REPO}/jobs/examples/video-quickstart.yaml"  # input: {builtin: 8}
    spec = load_spec(video, [f"input.url={tmp_path}"])
    assert (spec.input.url, spec.input.builtin) == (str(tmp_path), None)
    (tmp_path / "p.txt").write_text("a fox\n")
    spec = parse(spec_dict(tmp_path / "o"), [f"prompts.file={tmp_path}/p.txt"])  # the spec has prompts.inline
    assert spec.prompts.file == f"{tmp_path}/p.txt" and spec.prompts.inline is None
    with pytest.raises(ConfigError, match="give exactly one of input.builtin or input.url"):
        load_spec(video, [f"input.url={tmp_path}", "input.builtin=2"])
    assert load_spec(video, ["input.builtin=2"]).input.builtin == 2


@pytest.mark.parametrize("example", sorted(n for n in os.listdir(os.path.join(REPO, "jobs", "examples")) if n.endswith(".yaml")))
def test_every_example_dry_runs_cleanly(tmp_path, example):
    """From a fresh checkout: a plan (exit 0), or, for the examples that read another example's
    output (encode, redecode, train-decoder) or photos (train-vae), one line naming that missing input (exit 2).
    tests/test_readme.py dry-runs them all again once their inputs exist."""
    os.symlink(os.path.join(REPO, "jobs"), tmp_path / "jobs")
    done = subprocess.run([sys.executable, "-m", "jobs.cli", "run", f"jobs/examples/{example}", "--dry-run"],
                          capture_output=True, text=True, cwd=tmp_path, env={**os.environ, "PYTHONPATH": REPO})
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    if done.returncode == 0:
        assert done.stdout.startswith(f"job {yaml.safe_load(open(os.path.join(REPO, 'jobs', 'examples', example)))['name']!r}")
    else:
        lines = done.stderr.strip().splitlines()
        missing = "photos/vae-train" if example == "train-vae.yaml" else "./latentmill-output/"  # sample_photos' folder
        assert done.returncode == 2 and len(lines) == 1 and missing in lines[0], done.stderr
        assert example in ("encode.yaml", "redecode.yaml", "train-decoder.yaml", "train-vae.yaml")
