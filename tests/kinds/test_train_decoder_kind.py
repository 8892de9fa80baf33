"""The train-decoder kind seen from the job layer: `run --dry-run` describes the training run (it
used to fail with a KeyError traceback, as the kind has no shard pipeline)."""

from __future__ import annotations

import os

from jobs.cli import main as cli_main
from tests.conftest import REPO


def test_dry_run_describes_a_training_run(capsys):
    spec = os.path.join(REPO, "jobs/examples/train-decoder.yaml")
    assert cli_main(["run", spec, "--dry-run", "--set", "optim.steps=40"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "job 'train-lean' (train-decoder) -> ./latentmill-output/train-lean"
    assert out[1].startswith("  train: lean from scratch, target image; model sdxl tiny")
    assert "optim: 40 steps" in out[3]
