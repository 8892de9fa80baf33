"""`latentmill browse` in a real headless Chromium: grid, filters, sample pages, video, S3, damage.

Three real jobs (a local image job with a failed sample, latents and a quality monitor; a video
job; an image job on the test S3 server) are shared by the tests; damage is done to a copy.
"""

from __future__ import annotations

import contextlib
import html
import shutil
import socket
import subprocess
import sys
import tarfile
import threading
import urllib.error
import urllib.request

import pyarrow.parquet as pq
import pytest
import yaml

from jobs.browse.server import make_server
from jobs.browse.site import Site
from jobs.cli import main
from jobs.local import run_job
from jobs.spec import parse_spec
from pipelines.config import StorageConfig
from pipelines.faults import Fault
from pipelines.sinks.layout import OutputLayout
from tests.conftest import REPO, S3_KEY_ENV, S3_SECRET_ENV, s3_storage
from tests.support.browser import chromium_page
from tests.support.jobspecs import VIDEO_BASE, changed, encode_spec_dict, spec_dict

MONITOR = {"fraction": 0.5, "min_psnr": 40.0}
FAILED_KEY = "000000005"


def parse(data: dict):
    return parse_spec(yaml.safe_dump(data), source="test.yaml")


@pytest.fixture(scope="module")
def images(ray_cluster, tmp_path_factory):
    """24 images of 3 prompts in 3 shards, latents kept, half monitored (random:taesd: low PSNR), one failed."""
    out = tmp_path_factory.mktemp("browse-images") / "out"
    spec = parse(spec_dict(out, decoder="random:taesd", quality_monitor=MONITOR, output__save_latents=True,
                           stages__monitor={"num_gpus": 0, "num_cpus": 0.25, "batch_size": 4}))
    run_job(spec, progress=False, faults=(Fault.parse(f"decode:raise:{FAILED_KEY}"),))
    return out


@pytest.fixture(scope="module")
def video(ray_cluster, tmp_path_factory):
    out = tmp_path_factory.mktemp("browse-video") / "out"
    run_job(parse(changed(VIDEO_BASE, out)), progress=False)
    return out


@contextlib.contextmanager
def serving(url: str, storage: StorageConfig | None = None):
    """The real server on a free port in this process; yields its base URL."""
    server = make_server(Site(OutputLayout(url, storage), storage), "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def cells(page) -> list[dict]:
    """The grid's cells: key, status, whether the thumbnail decoded, the error text shown."""
    page.wait_for_load_state("networkidle")
    return page.eval_on_selector_all("#grid .cell", """els => els.map(a => ({
        key: a.dataset.key, status: a.classList[1], title: a.title,
        loaded: !!a.querySelector('img') && a.querySelector('img').complete && a.querySelector('img').naturalWidth > 0,
        error: a.querySelector('.error') ? a.querySelector('.error').textContent : null}))""")


def monitor_psnr(out) -> dict[str, float]:
    rows = [r for p in sorted((out / "shards").glob("*.parquet")) for r in pq.read_table(p).to_pylist()]
    return {r["key"]: r["monitor_psnr"] for r in rows if r.get("monitor_psnr") is not None}


def test_grid_pages_filters_and_failed_samples(images):
    with serving(str(images)) as base, chromium_page() as page:
        page.goto(base + "grid.html?per=10&page=3")
        shown = cells(page)
        assert [c["key"] for c in shown] == [f"0000000{i:02d}" for i in range(20, 24)]
        assert all(c["loaded"] for c in shown) and "a green frog" in shown[0]["title"]  # hover: key, prompt, seed
        page.goto(base + "grid.html")
        shown = cells(page)
        assert len(shown) == 24 and sum(c["loaded"] for c in shown) == 23
        failed = next(c for c in shown if c["key"] == FAILED_KEY)
        assert failed["status"] == "failed" and "injected" in failed["error"].lower()
        page.fill("input[name=q]", "FOX")
        page.click("button[type=submit]")
        fox = cells(page)
        assert len(fox) == 8 and all("a red fox" in c["title"] for c in fox) and all(c["loaded"] for c in fox)
        page.select_option("select[name=status]", "failed")
        page.fill("input[name=q]", "")
        page.click("button[type=submit]")
        assert [c["key"] for c in cells(page)] == [FAILED_KEY]
        psnr = monitor_psnr(images)
        threshold = sorted(psnr.values())[len(psnr) // 2]
        page.goto(base + f"grid.html?psnr_below={threshold}")
        assert sorted(c["key"] for c in cells(page)) == sorted(k for k, v in psnr.items() if v < threshold)
        page.goto(base)
        counts = dict(page.eval_on_selector_all("table.counts tr", "rows => rows.map(r => [r.cells[0].textContent, r.cells[1].textContent])"))
        assert counts["committed"] == "23" and counts["failed"] == "1" and counts["planned"] == "24"
        assert counts["flagged shards"] == "3"  # random weights: every shard's mean PSNR is below 40 dB
        page.goto(base + "grid.html?flagged=1&shard=00001")
        assert len(cells(page)) == 8


def test_sample_page_shows_the_image_its_metadata_latents_and_neighbours(images):
    with serving(str(images)) as base, chromium_page() as page:
        page.goto(base + "grid.html")
        page.click('a.cell[data-key="000000013"]')
        page.wait_for_load_state("networkidle")
        assert page.text_content("#prompt") == "a red fox" and page.text_content("#seed") == "20"
        assert '"key": "000000013"' in page.text_content("#meta")
        assert page.eval_on_selector("#image", "img => img.naturalWidth") == 64
        text = page.text_content("main")
        assert "[4, 8, 8]" in text and "float32" in text  # the kept latents' shape and dtype
        neighbours = page.eval_on_selector_all(".neighbours a", "els => els.map(a => a.title.split(' ')[0])")
        assert sorted(neighbours) == ["000000000", "000000001", "000000002", "000000003", "000000012", "000000014", "000000015"]


def test_unknown_key_is_a_404_page_and_files_answer_byte_ranges(images):
    with serving(str(images)) as base:
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(base + "sample-nope.html")
        assert missing.value.code == 404 and "no sample has the key 'nope'" in html.unescape(missing.value.read().decode())
        request = urllib.request.Request(base + "files/000000002.png", headers={"Range": "bytes=0-7"})
        with urllib.request.urlopen(request) as answer:
            assert answer.status == 206 and answer.read() == b"\x89PNG\r\n\x1a\n"


def test_a_damaged_shard_shows_its_error_and_the_rest_works(images, tmp_path):
    damaged = tmp_path / "damaged"
    shutil.copytree(images, damaged)
    tar = damaged / "shards" / "00001.tar"
    tar.write_bytes(tar.read_bytes()[:2048])
    with serving(str(damaged)) as base, chromium_page() as page:
        page.goto(base + "grid.html")
        shown = cells(page)
        broken = [c for c in shown if c["status"] == "damaged"]
        assert [c["key"] for c in broken] == [f"0000000{i:02d}" for i in range(8, 16)]
        assert all("shards/00001.tar is truncated: 2048 bytes" in c["error"] for c in broken)
        assert sum(c["loaded"] for c in shown) == 15  # 16 others, one of which failed in the job
        page.goto(base)
        assert "shard 00001: tar shards/00001.tar is truncated" in page.text_content("main")


def test_video_sample_plays(video):
    with serving(str(video)) as base, chromium_page() as page:
        page.goto(base + "grid.html")
        shown = cells(page)
        assert len(shown) == 4 and all(c["loaded"] for c in shown)  # thumbnails from the posters
        page.click(f'a.cell[data-key="{shown[1]["key"]}"]')
        page.wait_for_function("document.querySelector('#video').readyState >= 2", timeout=30_000)
        assert page.eval_on_selector("#video", "v => [v.videoWidth, v.videoHeight]") == [64, 64]


def test_an_s3_output_browses_the_same(ray_cluster, s3_server, tmp_path):
    url = "s3://latentmill/browse-test"
    run_job(parse(spec_dict(url, num_images=8, output__storage=s3_storage(s3_server))), progress=False)
    storage = StorageConfig(endpoint_url=s3_server.endpoint, region="us-east-1",
                            access_key_id_env=S3_KEY_ENV, secret_access_key_env=S3_SECRET_ENV)
    with serving(url, storage) as base, chromium_page() as page:
        page.goto(base + "grid.html")
        shown = cells(page)
        assert len(shown) == 8 and all(c["loaded"] for c in shown)
        page.click('a.cell[data-key="000000004"]')
        page.wait_for_load_state("networkidle")
        assert page.text_content("#prompt") == "a blue whale"
        assert page.eval_on_selector("#image", "img => img.naturalWidth") == 64
    # The command line with --export, over S3: a static copy of the first 5 samples.
    args = ["browse", url, "--export", str(tmp_path / "site"), "--limit", "5", "--endpoint-url", s3_server.endpoint,
            "--region", "us-east-1", "--access-key-id-env", S3_KEY_ENV, "--secret-access-key-env", S3_SECRET_ENV]
    assert main(args) == 0
    with chromium_page() as page:
        page.goto((tmp_path / "site" / "grid-1.html").as_uri())
        shown = cells(page)
        assert len(shown) == 5 and all(c["loaded"] for c in shown)
        page.click('a.cell[data-key="000000004"]')
        assert page.text_content("#prompt") == "a blue whale"


def test_command_line_bad_input_gets_one_line(images, tmp_path, capsys):
    assert main(["browse", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: {str(tmp_path)!r} is not a latentmill job output: it has no latentmill.json. Give the output.url of a "
        "job (the folder holding latentmill.json, index.json and shards/)"]
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    try:
        assert main(["browse", str(images), "--port", str(port)]) == 2
    finally:
        taken.close()
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: --port {port}: 127.0.0.1:{port} is already in use; choose another port with --port"]
    unreachable = ["browse", "s3://latentmill/x", "--endpoint-url", "http://127.0.0.1:9", "--timeout", "1",
                   "--access-key-id-env", S3_KEY_ENV, "--secret-access-key-env", S3_SECRET_ENV]
    assert main(unreachable) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "127.0.0.1:9" in err[0]


def test_a_non_local_host_is_warned_about_and_the_url_printed(images):
    command = [sys.executable, "-m", "jobs.cli", "browse", str(images), "--host", "0.0.0.0", "--port", "0"]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline()
        assert line.startswith(f"browsing {images} at http://0.0.0.0:")
        port = int(line.split(":")[-1].split("/")[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/") as answer:
            assert answer.status == 200 and "test-job: overview" in answer.read().decode()
    finally:
        process.terminate()
        process.wait(timeout=30)
    assert "the page has no authentication" in process.stderr.read()


def test_encode_and_redecode_samples_show_the_image_they_are_compared_with(images, photos, tmp_path):
    encoded = tmp_path / "encoded"
    run_job(parse(encode_spec_dict(photos, encoded, output__samples_per_shard=32)), progress=False)
    with serving(str(encoded)) as base, chromium_page() as page:
        key = OutputLayout(str(encoded)).read_plan_table().column("key")[3].as_py()
        # The first comparison loads torch, diffusers and the VAE in the server: allow for a loaded machine.
        page.goto(base + f"sample-{key}.html", timeout=300_000)
        page.wait_for_load_state("networkidle", timeout=300_000)
        sizes = page.eval_on_selector_all("#image, #compare", "els => els.map(i => [i.id, i.naturalWidth, i.naturalHeight])")
        assert sizes == [["image", 64, 64], ["compare", 64, 64]]  # the resized input, its latents decoded by the VAE
        assert "its latents decoded by the model's VAE" in page.text_content(".media")
    redecoded = tmp_path / "redecoded"
    run_job(parse({"name": "test-redecode", "kind": "redecode", "input": {"url": str(images)}, "decoder": "sdxl-vae",
                   "output": {"url": str(redecoded), "samples_per_shard": 8},
                   "stages": {"read": {"num_cpus": 0.25, "batch_size": 4},
                              "decode": {"num_gpus": 0, "num_cpus": 0.5, "batch_size": 4}}}), progress=False)
    with serving(str(redecoded)) as base:
        with urllib.request.urlopen(base + "compare/000000002.png") as answer:
            source = answer.read()
        with urllib.request.urlopen(base + "files/000000002.png") as answer:
            new = answer.read()
    with tarfile.open(images / "shards" / "00000.tar") as tar:
        assert source == tar.extractfile("000000002.png").read() != new  # the source output's image, then ours
