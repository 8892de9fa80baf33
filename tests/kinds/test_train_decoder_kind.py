"""The train-decoder kind seen from the job layer: `run --dry-run` makes the checks a training run
makes before Ray (they read its data) and says in one line what is missing, never a KeyError
traceback (the kind has no shard pipeline). The description of a run over real data is tested with
the encode output of tests/test_train.py."""

from __future__ import annotations

import os

from jobs.cli import main as cli_main
from tests.conftest import REPO

EXAMPLE = os.path.join(REPO, "jobs/examples/train-decoder.yaml")


def test_dry_run_without_its_training_data_is_one_line_naming_the_data(tmp_path, capsys):
    missing = tmp_path / "no-such-encode-output"
    assert cli_main(["run", EXAMPLE, "--dry-run", "--set", f"data.urls=[{missing}]"]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert "Traceback" not in captured.err and len(lines) == 1 and str(missing) in lines[0], captured.err
    assert captured.out == ""


def test_a_fault_injected_into_a_training_run_is_refused_in_one_line(tmp_path, capsys):
    code = cli_main(["run", EXAMPLE, "--dry-run", "--inject-fault", "decode:raise:1",
                     "--set", f"data.urls=[{tmp_path}]"])
    err = capsys.readouterr().err
    assert code == 2 and "a train-decoder job has no stages to inject faults into" in err, err
