"""`latentmill bench gpu --smoke`: the GPU benchmark's code, run at tiny sizes on the CPU so it cannot rot.

Its figures say nothing about GPUs; this checks that every part runs, the tables land in the document
between the markers (the rest of the document kept), and the profile is one `bench scheduler` reads.
"""

from __future__ import annotations

from jobs.bench.gpu import MARK_END, MARK_START, main
from jobs.bench.scheduler import load_profiles, scaled_times


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


def test_full_run_needs_a_gpu_and_says_so_in_one_line(capsys):
    import torch

    if torch.cuda.is_available():  # on a GPU machine the full run is the benchmark itself, not a test
        return
    assert main([]) == 2
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0 and "no CUDA GPU here" in err and "--smoke" in err


def test_profile_leaves_out_what_did_not_fit_in_memory():
    from jobs.bench.gpu import SMOKE, measured_profiles

    decode = [{"decoder": "sdxl-vae", "size": 64, "dtype": "float32", "batch": 2, "note": "out of GPU memory"},
              {"decoder": "sdxl-vae", "size": 64, "dtype": "float32", "batch": 1, "latency_s": 0.5},
              {"decoder": "taesd", "size": 64, "dtype": "float32", "batch": 2, "latency_s": 0.1}]
    denoise = [{"compile": False, "batch": 2, "s_per_image": 3.0}, {"compile": False, "batch": 4, "note": "out of GPU memory"}]
    video = [{"denoise_s": 10.0, "note": "out of GPU memory"}]
    profiles = measured_profiles(decode, denoise, video, SMOKE)
    assert set(profiles) == {"sdxl-64-vae", "sdxl-64-light"}  # no video profile from half a measurement
    assert profiles["sdxl-64-vae"]["stages"]["decode"] == {"per_item_s": 0.5, "batch_size": 1}  # the batch that fitted
    assert profiles["sdxl-64-light"]["stages"]["decode"]["per_item_s"] == 0.05
    assert profiles["sdxl-64-vae"]["stages"]["denoise"] == {"per_item_s": 3.0, "batch_size": 2}


def test_a_short_lease_runs_parts_apart_and_part_5_profiles_only_what_ran(tmp_path):
    # infra/gpu-bench.sh's second call: `--parts 4,5` measures the video part alone and writes its profile.
    doc, profile = tmp_path / "gpu-benchmark.md", tmp_path / "profiles.yaml"
    assert main(["--smoke", "--parts", "4,5", "--compile", "no", "--out", str(doc), "--profile-out", str(profile)]) == 0
    text = doc.read_text()
    assert "#### video" in text and "#### decoders" not in text and "#### denoise" not in text
    assert "GPU figures: pending a GPU" in text and text.count(MARK_END) == 1
    assert set(load_profiles(str(profile))) == {"svd-xt-64x64"}
