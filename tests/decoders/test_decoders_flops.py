"""FLOPs counted on the meta device (deterministic, so they can be tested; timings cannot)."""

import json

import pytest

from decoders import bench
from decoders.flops import count_flops


@pytest.mark.parametrize("name, gflop", [("sdxl-vae", 10_470), ("taesd", 565), ("tae-192", 5_066)])
def test_flops_at_1024_match_reference_counts(name, gflop):
    assert round(count_flops(name, 1024, 1024) / 1e9) == gflop


def test_ratios_against_sdxl_vae():
    sdxl = count_flops("sdxl-vae", 1024, 1024)
    assert round(sdxl / count_flops("taesd", 1024, 1024), 1) == 18.5
    assert round(sdxl / count_flops("tae-192", 1024, 1024), 1) == 2.1


def test_effvit_needs_fewer_flops_than_sdxl_vae_at_512():
    assert count_flops("effvit", 512, 512) * 4 < count_flops("sdxl-vae", 512, 512)


def test_temporal_decoder_needs_fewer_flops_than_svd_vae():
    assert count_flops("tae-temporal", 512, 512, frames=4) * 10 < count_flops("svd-vae", 512, 512, frames=4)


def test_flops_scale_with_batch_and_frames():
    one = count_flops("tae-temporal", 256, 256, frames=2)
    assert count_flops("tae-temporal", 256, 256, frames=4) == 2 * one
    assert count_flops("taesd", 256, 256, batch=3) == 3 * count_flops("taesd", 256, 256)


def test_sizes_must_be_multiples_of_8():
    with pytest.raises(ValueError, match="multiples of 8"):
        count_flops("taesd", 100, 100)


def test_bench_json_reports_counts_without_timing(capsys):
    assert bench.main(["--no-latency", "--json", "--sizes", "1024", "--frames", "2"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    by_name = {r["decoder"]: r for r in rows}
    assert set(by_name) == {"sdxl-vae", "taesd", "tae-192", "effvit", "lean", "tae-temporal", "svd-vae"}
    assert by_name["sdxl-vae"]["gflop"] == pytest.approx(10_470, abs=1)
    assert by_name["taesd"]["flops_ratio"] == pytest.approx(18.5, abs=0.05)
    assert by_name["tae-192"]["params_m"] == pytest.approx(10.97, abs=0.005)
    assert by_name["svd-vae"]["frames"] == 2 and by_name["tae-temporal"]["baseline"] == "svd-vae"


def test_bench_times_a_decoder_and_prints_a_table(capsys, tmp_path):
    argv = ["--decoders", "taesd,effvit", "--sizes", "64", "--repeats", "2", "--warmup", "1", "--in-process"]
    assert bench.main(argv + ["--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["decoder"] for r in rows] == ["taesd", "effvit"]
    for r in rows:
        assert r["repeats"] == 2 and r["warmup"] == 1 and 0 < r["min_s"] <= r["median_s"] <= r["max_s"]
        assert r["device"] == "cpu" and r["compute_dtype"] == "float32" and "peak_mem_mb" in r
        assert r["speedup"] is None  # the baseline was not run
    markdown = tmp_path / "bench.md"
    assert bench.main(argv + ["--markdown", str(markdown)]) == 0
    out = capsys.readouterr().out
    # The terminal gets a narrow table; the Markdown file every column.
    assert any(line.split()[:4] == ["taesd", "cpu", "float32", "64"] for line in out.splitlines()), out
    assert "machine:" in out and max(len(line) for line in out.splitlines() if str(markdown) not in line) <= 100
    assert "| taesd | cpu | float32 | 64x64 |" in markdown.read_text()


def test_bench_rejects_unknown_decoders():
    with pytest.raises(SystemExit):
        bench.main(["--decoders", "nope"])


def test_bench_interleaved_mode_times_every_decoder(capsys):
    argv = ["--decoders", "taesd,effvit", "--sizes", "64", "--repeats", "2", "--interleave", "--json"]
    assert bench.main(argv) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["decoder"] for r in rows] == ["taesd", "effvit"]
    assert all(r["interleaved"] and r["repeats"] == 2 and r["median_s"] > 0 for r in rows)
