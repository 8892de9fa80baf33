"""docs/decoder-training.md's reproduction in miniature: the same script (jobs/examples/decoder-repro.sh,
`make decoder-repro`) with tiny sizes, on the tests' Ray cluster: photo crops -> `latentmill run`
train-vae (the teacher) -> encode with the teacher -> train-decoder x3 and lean against the teacher's
decode -> `latentmill eval` with every baseline. The teacher's reconstruction must beat the
mean-colour baseline in eval's JSON, and every step's output must exist."""

from __future__ import annotations

import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = ["photos-teacher", "photos-train", "photos-test", "teacher", "encode-train", "encode-test", "distil-lean", "distil-taesd",
         "distil-tae-192", "distil-lean-teacher", "eval"]
WORKERS = "--set scaling.num_workers=1 --set scaling.cpus_per_worker=1 --set scaling.use_gpu=false"
MINIATURE = {
    "TRAIN_CROPS": "96", "TEST_CROPS": "8", "SIZE": "32", "SHARD": "32", "TEACHER_CROPS": "96",
    "TEACHER_CROP_SIZE": "48",
    # A narrow teacher trained long enough to beat a constant colour clearly.
    "TEACHER_STEPS": "150",
    "TEACHER_SETS": f"--set vae.block_out_channels=[16,16,16,16] --set vae.norm_num_groups=8 "
                    f"--set optim.batch_size=8 --set optim.lr=0.002 --set checkpoints.every_steps=150 "
                    f"--set eval_samples=4 --set scaling_samples=32 {WORKERS}",
    "LEAN_STEPS": "4", "TAESD_STEPS": "2", "TAE192_STEPS": "2",
    "DECODER_SETS": f"--set tiny=true --set optim.batch_size=4 --set optim.warmup_steps=1 "
                    f"--set checkpoints.every_steps=4 --set eval_samples=4 {WORKERS}",
}


def test_the_reproduction_script_runs_end_to_end_and_the_teacher_beats_the_mean_colour(ray_cluster, tmp_path):
    env = {**os.environ, **MINIATURE, "WORK": str(tmp_path / "repro"), "PYTHON": sys.executable,
           "LATENTMILL": f"{sys.executable} -m jobs.cli", "RUN_FLAGS": f"--address {ray_cluster} --quiet",
           "PYTHONPATH": REPO}
    done = subprocess.run(["bash", "jobs/examples/decoder-repro.sh"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    work = tmp_path / "repro"
    timings = (work / "timings.tsv").read_text().splitlines()
    assert [line.split("\t")[0] for line in timings[1:]] == STEPS
    assert (work / "teacher" / "vae" / "config.json").exists()
    for name in ("distil-lean", "distil-taesd", "distil-tae-192", "distil-lean-teacher"):
        assert (work / name / "decoder" / "config.json").exists() and (work / name / "report.json").exists()
    report = json.loads((work / "distil-lean-teacher" / "report.json").read_text())
    assert report["target"] == "reference" and report["reference_model"] == str(work / "teacher" / "vae")
    result = json.loads((work / "eval" / "eval.json").read_text())
    rows = {r["decoder"]: r for r in result["rows"]}
    teacher = next(r for r in result["rows"] if r["is_reference"])
    assert result["reference"]["teacher"] and result["reference"]["model"] == str(work / "teacher" / "vae")
    assert {"grey 0.5", "mean colour", "linear (least squares)", "lean, untrained"} <= set(rows)
    assert len(result["rows"]) == 1 + 4 + 4
    assert teacher["psnr_vs_original"] > rows["mean colour"]["psnr_vs_original"] + 1.0, result["rows"]
    assert (work / "eval" / "grid.png").exists() and "| PSNR vs teacher |" in (work / "eval" / "eval.md").read_text()
