"""Small job specs for tests: the tiny model at 64x64 with few steps, so a job takes seconds."""

from __future__ import annotations

import copy

import yaml

BASE = {
    "name": "test-job",
    "kind": "generate",
    "model": {"family": "sdxl", "reference": "tiny"},
    "sampler": {"scheduler": "euler", "steps": 2, "guidance_scale": 5.0, "height": 64, "width": 64},
    "prompts": {"inline": ["a red fox", "a blue whale", "a green frog"], "images_per_prompt": 4},
    "num_images": 24,
    "seed": 7,
    "decoder": "sdxl-vae",
    "output": {"url": "OUT", "image_format": "png", "samples_per_shard": 8},
    "stages": {
        "denoise": {"num_gpus": 0, "num_cpus": 1, "batch_size": 4},
        "decode": {"num_gpus": 0, "num_cpus": 0.5, "batch_size": 4},
        "write": {"num_cpus": 0.25, "concurrency": 2},
    },
}


# Latent precompute over a folder of photos (tests/conftest.py `photos`), 64x64, tiny VAE.
ENCODE_BASE = {
    "name": "test-encode",
    "kind": "encode",
    "input": {"url": "IN"},
    "model": {"reference": "tiny"},
    "image": {"height": 64, "width": 64},
    "output": {"url": "OUT", "samples_per_shard": 8},
    "stages": {
        "read": {"num_cpus": 0.25, "batch_size": 4},
        "encode": {"num_gpus": 0, "num_cpus": 0.5, "batch_size": 4},
        "write": {"num_cpus": 0.25, "concurrency": 2},
    },
}
# Image-to-video with the tiny SVD over 4 built-in conditioning images, 8 frames of 64x64.
VIDEO_BASE = {
    "name": "test-video",
    "kind": "generate-video",
    "model": {"family": "svd", "reference": "tiny"},
    "input": {"builtin": 4},
    "video": {"frames": 8, "fps": 6, "height": 64, "width": 64, "steps": 2},
    "seed": 3,
    "decoder": "svd-vae",
    "output": {"url": "OUT", "samples_per_shard": 2},
    "stages": {
        "read": {"num_gpus": 0, "num_cpus": 0.25, "batch_size": 2},
        "denoise": {"num_gpus": 0, "num_cpus": 0.75, "batch_size": 2},
        "decode": {"num_gpus": 0, "num_cpus": 0.5, "batch_size": 1},
        "write": {"num_cpus": 0.25, "concurrency": 2},
    },
}
# Slow enough that faults land mid-run: 8 shards (about 1 s each here) of SLOW_SAMPLES[kind] samples.
SLOW = {
    "generate": {"num_images": 64, "sampler__height": 128, "sampler__width": 128, "sampler__steps": 8},
    "encode": {"image__height": 128, "image__width": 128, "stages__read__batch_size": 2,
               "stages__encode__batch_size": 2},
    "generate-video": {"input__builtin": 16},
}
SLOW_SAMPLES = {"generate": 64, "encode": 64, "generate-video": 16}


def spec_dict(output_url: str, **changes) -> dict:
    """BASE with output.url set; `changes` maps dotted paths to values (None deletes the field)."""
    return changed(BASE, output_url, **changes)


def encode_spec_dict(input_url, output_url, **changes) -> dict:
    return changed(ENCODE_BASE, output_url, **{"input__url": str(input_url), **changes})


def kind_spec_dict(kind: str, output_url, photos=None, slow: bool = False, **changes) -> dict:
    """A spec of `kind` (generate, encode over the folder `photos`, or generate-video), optionally slowed down."""
    changes = {**(SLOW[kind] if slow else {}), **changes}
    if kind == "encode":
        return encode_spec_dict(photos, output_url, **changes)
    return changed(VIDEO_BASE if kind == "generate-video" else BASE, output_url, **changes)


def changed(base: dict, output_url, **changes) -> dict:
    """A copy of the spec `base` with output.url set and `changes` (a__b=value sets a.b; None deletes)."""
    spec = copy.deepcopy(base)
    spec["output"]["url"] = str(output_url)
    for dotted, value in changes.items():
        *parents, last = dotted.split("__")
        node = spec
        for key in parents:
            node = node.setdefault(key, {})
        if value is None:
            node.pop(last, None)
        else:
            node[last] = value
    return spec


def write_spec(path, output_url, **changes) -> str:
    path.write_text(yaml.safe_dump(spec_dict(output_url, **changes), sort_keys=False))
    return str(path)
