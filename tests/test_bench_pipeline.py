"""`latentmill bench pipeline` with a random-weights model reference: the command a GPU runs with
`random:sdxl` (full size), run here with `random:sdxl-tiny` (the same build path, tiny sizes) at
64 px, 2 steps, 8 images on the session Ray."""

from __future__ import annotations

import json
import re

from PIL import Image

from jobs.bench.pipeline import main
from pipelines.verify import verify_output


def test_bench_pipeline_takes_a_random_model_in_every_part(ray_cluster, tmp_path, capsys):
    sets = ["model.reference=random:sdxl-tiny", "sampler.height=64", "sampler.width=64", "sampler.steps=2",
            "num_images=8", "output.samples_per_shard=4", "stages.denoise.batch_size=4",
            "stages.decode.batch_size=4", "stages.denoise.concurrency=1"]
    argv = [arg for item in sets for arg in ("--set", item)]
    code = main([*argv, "--stage-batches", "1", "--address", ray_cluster, "--workdir", str(tmp_path), "--json"])
    out = capsys.readouterr().out
    result = json.loads(out[re.search(r"^\{$", out, re.M).start():])  # the JSON object, whatever came before
    assert code == 0 and result["spec"]["model"] == "random:sdxl-tiny" and result["spec"]["size"] == "64x64"
    # (a) each stage alone, (b) the pipeline, (c) the naive diffusers loop: all on the random build.
    assert all(result["stages"][name]["per_item_s"] > 0 for name in ("denoise", "decode", "write"))
    assert result["pipeline"]["images"] == 8 and verify_output(str(tmp_path / "pipeline"))["ok"]
    naive = sorted((tmp_path / "naive").glob("*.png"))
    assert result["naive"]["images"] == 8 and len(naive) == 8
    assert Image.open(naive[0]).size == (64, 64)
    assert result["speedup"] > 0 and result["efficiency"] > 0
