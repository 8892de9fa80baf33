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


def spec_dict(output_url: str, **changes) -> dict:
    """BASE with output.url set; `changes` maps dotted paths to values (None deletes the field)."""
    return changed(BASE, output_url, **changes)


def changed(base: dict, output_url: str, **changes) -> dict:
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
