"""The README's own commands work as written (issue 21, section 4).

Every ```bash block of the README that runs, verifies or reports a job is run here, in order, as
the README gives it, from a folder that holds the repository's jobs/ (so its relative paths mean
what they mean in a checkout). Three things are added, none of them to what a command says:
- absolute output folders (/tmp/..., /data/...) are moved under the test's temporary folder;
- `run` commands get `--set` overrides that shrink the job (fewer images, fewer steps), appended
  after the README's own, so each job takes seconds;
- RAY_ADDRESS names the test session's Ray cluster (as the README's cluster section does), so the
  commands do not each start a Ray of their own.
The cluster block (`ray start`, `submit` to a HEAD host) needs a remote cluster: tests/ops/test_submit.py.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time

import pytest

from jobs.train.sample_photos import write_crops

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLI = [sys.executable, "-m", "jobs.cli"]
JOB_COMMANDS = ("run", "verify", "report")
# Appended to a README `run` of each example: the same job, smaller.
SMALLER = {
    "jobs/examples/quickstart.yaml": ["num_images=4", "sampler.steps=2", "sampler.height=64", "sampler.width=64"],
    "jobs/examples/video-quickstart.yaml": ["video.steps=1", "video.frames=4"],
}
BUILTIN_CLIPS = "input.builtin=2"  # only where the command does not choose input.url itself


def readme_blocks() -> list[list[list[str]]]:
    """The ```bash blocks of README.md, each a list of commands (argument lists, comments dropped)."""
    text = open(os.path.join(REPO, "README.md"), encoding="utf-8").read()
    blocks = re.findall(r"^```bash\n(.*?)^```", text, flags=re.S | re.M)
    return [[shlex.split(line, comments=True) for line in block.replace("\\\n", " ").splitlines()
             if shlex.split(line, comments=True)] for block in blocks]


def job_blocks() -> list[list[list[str]]]:
    """Blocks whose commands are all `latentmill` run/verify/report/bench: the ones a test can run here."""
    return [block for block in readme_blocks()
            if any(c[0].endswith("bin/latentmill") and c[1] in JOB_COMMANDS for c in block)
            and all(c[0].endswith("bin/latentmill") for c in block)]


def makefile_quickstart() -> list[list[str]]:
    """The recipe of `make quickstart` (README: its first command), with $(BIN) as the venv's bin."""
    text = open(os.path.join(REPO, "Makefile"), encoding="utf-8").read()
    recipe = re.search(r"^quickstart:.*\n((?:\t.*\n)+)", text, flags=re.M).group(1)
    return [shlex.split(line.strip().replace("$(BIN)/", ".venv/bin/")) for line in recipe.splitlines()]


def as_run_here(command: list[str], tmp) -> list[str]:
    args = [re.sub(r"(^|=)/(tmp|data)/", rf"\g<1>{tmp}/abs/\g<2>/", a) for a in command[1:]]
    if args[0] == "run" and "--dry-run" not in args:
        extra = SMALLER.get(args[1], [])
        if args[1].endswith("video-quickstart.yaml") and not any(a.startswith("input.url=") for a in args):
            extra = [*extra, BUILTIN_CLIPS]
        args += [part for item in extra for part in ("--set", item)]
    return CLI + args


@pytest.fixture
def checkout(tmp_path):
    """A folder where `jobs/examples/...` resolves as in the repository."""
    os.symlink(os.path.join(REPO, "jobs"), tmp_path / "jobs")
    return tmp_path


def run_all(commands, cwd, env):
    for command in commands:
        started = time.monotonic()
        done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
        print(f"{time.monotonic() - started:6.1f} s  {' '.join(command[3:])}")  # in the log with -s or on failure
        assert done.returncode == 0, (command, done.returncode, done.stderr[-3000:])
        assert "Traceback" not in done.stderr, (command, done.stderr[-3000:])


def test_the_readme_commands_that_run_jobs_work_as_written(ray_cluster, checkout):
    blocks = job_blocks()
    # The blocks this test is about: quick start, latents (encode/redecode), reports, video.
    assert len(blocks) >= 4 and any("video-quickstart.yaml" in c for b in blocks for c in sum(b, []))
    env = {**os.environ, "PYTHONPATH": REPO, "RAY_ADDRESS": ray_cluster}
    commands = makefile_quickstart() + [c for block in blocks for c in block]
    run_all([as_run_here(c, checkout) for c in commands], checkout, env)
    # What they wrote: the README's encode output has latents that every example can be dry-run over.
    encoded = checkout / "abs" / "tmp" / "enc"
    assert (encoded / "index.json").exists() and (checkout / "latentmill-output" / "video-quickstart").exists()
    photos = checkout / "abs" / "photos"
    write_crops(str(photos / "train"), ["astronaut"], count=2, size=64)
    write_crops(str(photos / "test"), ["coffee"], count=2, size=64)
    inputs = {"encode.yaml": [], "redecode.yaml": [f"input.url={encoded}"],
              "train-decoder.yaml": [f"data.urls=[{encoded}]", "data.held_out_fraction=0.5"],
              "train-vae.yaml": [f"data.train_url={photos / 'train'}", f"data.held_out_url={photos / 'test'}"]}
    for name in sorted(n for n in os.listdir(os.path.join(REPO, "jobs", "examples")) if n.endswith(".yaml")):
        sets = [part for item in inputs.get(name, []) for part in ("--set", item)]
        done = subprocess.run(CLI + ["run", f"jobs/examples/{name}", "--dry-run", *sets], cwd=checkout, env=env,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0 and "Traceback" not in done.stderr, (name, done.stderr[-3000:])
        assert done.stdout.startswith("job "), (name, done.stdout)
