"""What a user sees in a terminal: the CLI driven in a pseudo-terminal (pexpect), one job shared by
the checks (phase lines from the first second, the bar and its stage rows, no Ray lines, Ctrl-C),
then its resume without a terminal (plain lines)."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import time

import pexpect
import pytest
import yaml

from tests.support.jobspecs import kind_spec_dict
from tests.support.slowness import slack

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLI = [sys.executable, "-m", "jobs.cli"]
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Z0-9]")
# Ray's logger ("2026-.. WARNING worker.py:123 -- ..."), workers' and the raylet's forwarded lines.
RAY_LINE = re.compile(r"\b(DEBUG|INFO|WARNING|ERROR)\b \S+\.py:\d+ --|\((raylet|pid=\d+|StageActor)")
BAR = "━"


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": REPO, "TERM": "xterm-256color", "COLUMNS": "100", "LINES": "40"}


def plain(text: str) -> str:
    return ANSI.sub("", text).replace("\r", "")


@pytest.fixture(scope="module")
def interrupted(ray_cluster, tmp_path_factory):
    """A slow job run in a pseudo-terminal and stopped with Ctrl-C once its stage rows show."""
    folder = tmp_path_factory.mktemp("terminal")
    spec = folder / "job.yaml"
    spec.write_text(yaml.safe_dump(kind_spec_dict("generate", folder / "out", slow=True, num_images=32)))
    started = time.monotonic()
    child = pexpect.spawn(CLI[0], CLI[1:] + ["run", str(spec), "--address", ray_cluster], cwd=REPO, env=_env(),
                          dimensions=(40, 100), encoding="utf-8", timeout=240)
    child.logfile_read = screen = io.StringIO()
    child.expect("latentmill: reading")
    first_line_s = time.monotonic() - started
    child.expect(r"rate/s")  # the stage table is drawn: the bar is up
    child.expect(r"decode\s+\d+")
    child.sendintr()
    child.expect(pexpect.EOF)
    child.close()
    return {"first_line_s": first_line_s, "text": screen.getvalue(), "exit": child.exitstatus,
            "spec": spec, "out": folder / "out"}


def test_a_phase_line_comes_within_two_seconds(interrupted):
    # 2 s on an idle machine (issue 23), stretched by the load like every bound in the suite.
    assert interrupted["first_line_s"] < slack(2.0), interrupted["first_line_s"]
    text = plain(interrupted["text"])
    for phase in ("latentmill: reading", "32 images to run (4 shards)", "connecting to the Ray cluster", "Ray ready in",
                  "starting actors and loading models: denoise 1 x", "actors ready: denoise 1/1, decode 1/1"):
        assert phase in text, (phase, text)


def test_the_bar_and_one_row_per_stage_are_drawn(interrupted):
    text = plain(interrupted["text"])
    assert BAR in text and "images (" in text and "images/s" in text and "ETA" in text
    header = re.search(r"stage\s+done\s+rate/s\s+actors\s+util\s+queue", text)
    assert header, text
    for stage in ("denoise", "decode", "write"):
        assert re.search(rf"^\s+{stage}\s+\d+\s+", text, re.MULTILINE), (stage, text)


def test_no_line_from_ray_reaches_the_screen(interrupted):
    lines = [line for line in plain(interrupted["text"]).splitlines() if RAY_LINE.search(line)]
    assert not lines, lines


def test_ctrl_c_leaves_the_last_frame_and_exactly_one_summary_line(interrupted):
    assert interrupted["exit"] == 130
    text = plain(interrupted["text"])
    last_frame = text.rindex("(interrupted)")
    after = [line.strip() for line in text[last_frame:].splitlines()[1:] if line.strip()]
    # The frame's figures line, its table header and its three stage rows, then one line: the summary.
    assert after[0].startswith(tuple("0123456789")) and "committed" in after[0], after
    assert after[1].startswith("stage") and [r.split()[0] for r in after[2:5]] == ["denoise", "decode", "write"]
    assert len(after) == 6 and after[5].startswith("interrupted: ") and "rerun the same command" in after[5], after


def test_without_a_terminal_the_resume_prints_plain_lines(interrupted):
    done = subprocess.run(CLI + ["run", str(interrupted["spec"]), "--address", os.environ.get("RAY_ADDRESS") or
                                 _address()], cwd=REPO, env={**_env(), "TERM": "dumb"}, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert "\x1b" not in done.stderr + done.stdout and BAR not in done.stderr
    lines = done.stderr.splitlines()
    assert any(line.startswith("latentmill: resuming: ") or line.startswith("latentmill: 32 images to run")
               for line in lines), lines
    assert any(line.startswith("test-job (finished): 32/32 images (100%) | 32 committed") for line in lines), lines
    assert any(re.match(r"  decode +\d+ done", line) for line in lines), lines
    assert not [line for line in lines if RAY_LINE.search(line)]
    assert re.match(r"test-job: \d+ images generated in [\d.]+ s", done.stdout), done.stdout


def _address() -> str:
    import ray

    return ray.get_runtime_context().gcs_address
