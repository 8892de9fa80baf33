"""`latentmill bench gpu --smoke`: the GPU benchmark's code, run at tiny sizes on the CPU so it cannot rot.

Its figures say nothing about GPUs; this checks that every part runs, the tables land in the document
between the markers (the rest of the document kept), and the profile is one `bench scheduler` reads.
"""

from __future__ import annotations

from jobs.bench_gpu import MARK_END, MARK_START, main
from jobs.bench_scheduler import load_profiles, scaled_times


def test_bench_gpu_smoke_runs_every_part_and_writes_the_doc_and_profile(ray_cluster, tmp_path):
    doc, profile = tmp_path / "gpu-benchmark.md", tmp_path / "profiles.yaml"
    doc.write_text(f"# GPU benchmark\n\nintro kept\n\n{MARK_START}\nold figures\n{MARK_END}\n\nclosing kept\n")
    code = main(["--smoke", "--out", str(doc), "--profile-out", str(profile), "--address", ray_cluster,
                 "--workdir", str(tmp_path / "jobs")])
    assert code == 0
    text = doc.read_text()
    assert text.startswith("# GPU benchmark\n\nintro kept\n\n") and text.endswith(f"{MARK_END}\n\nclosing kept\n")
    assert "old figures" not in text and "CPU smoke run" in text
    for part in ("decoders", "denoise", "end to end", "video"):
        assert f"#### {part}" in text
    for decoder in ("sdxl-vae", "taesd", "tae-192", "effvit", "lean"):
        assert f"| {decoder} | 64 | float32 | 2 |" in text
    # Part 3 ran real jobs on the test cluster's 2 logical GPUs: both layouts, both decoders, a rate each.
    e2e = text[text.index("#### end to end"):text.index("#### video")]
    rows = [line for line in e2e.splitlines() if line.startswith("| one GPU") or line.startswith("| two GPUs")]
    assert len(rows) == 4 and all(line.split(" | ")[2] not in ("-", "") for line in rows)
    profiles = load_profiles(str(profile))
    assert set(profiles) == {"sdxl-64-vae", "sdxl-64-light", "svd-xt-64x64"}
    for p in profiles.values():
        assert all(t > 0 for t in scaled_times(p, 1.0).values())
    assert profiles["sdxl-64-vae"]["stages"]["denoise"] == profiles["sdxl-64-light"]["stages"]["denoise"]
