"""Nightly dated builds: {date} templates, reruns, retention, latest.json and the webhook summary."""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
import yaml

from jobs.cli import main as cli_main
from jobs.dates import DatedOutputs, parse_date
from jobs.ops.nightly import post_summary
from jobs.spec import load_spec, parse_spec
from pipelines.config import NotifyConfig
from pipelines.errors import ConfigError
from tests.conftest import REPO

NIGHTLY = f"{REPO}/jobs/examples/nightly.yaml"
TOKEN = "hook-secret-5f3a"


class Webhook:
    """A local HTTP server that records the JSON bodies POSTed to it."""

    def __init__(self):
        received = self.received = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                received.append({"path": self.path,
                                 "body": json.loads(self.rfile.read(int(self.headers["Content-Length"])))})
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hooks/latentmill?token={TOKEN}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def webhook(monkeypatch):
    hook = Webhook()
    monkeypatch.setenv("LATENTMILL_WEBHOOK_URL", hook.url)
    yield hook
    hook.close()


def run_nightly(root, date: str, *extra: str) -> int:
    return cli_main(["run", NIGHTLY, "--date", date, "--quiet", "--set", f"output.url={root}/{{date}}",
                     "--set", "output.retention.keep=1", *extra])


def test_nightly_rerun_retention_latest_and_webhook(ray_cluster, tmp_path, webhook, capsys):
    root = tmp_path / "nightly"
    assert run_nightly(root, "2026-11-20") == 0
    day1 = root / "2026-11-20"
    latest = json.loads((root / "latest.json").read_text())
    assert latest["date"] == "2026-11-20" and latest["url"] == str(day1) and latest["samples"] == 16
    first = webhook.received[-1]["body"]
    assert first["status"] == "succeeded" and first["job"] == "nightly" and first["date"] == "2026-11-20"
    assert (first["planned"], first["samples"], first["generated"], first["missing"], first["failed"]) == (16, 16, 16, 0, 0)
    assert first["samples_per_s"] > 0 and first["output_url"] == str(day1)
    assert webhook.received[-1]["path"] == f"/hooks/latentmill?token={TOKEN}"

    # The same date again: nothing generated, nothing rewritten.
    shard_files = {p: p.stat().st_mtime_ns for p in (day1 / "shards").iterdir()}
    assert run_nightly(root, "2026-11-20") == 0
    assert {p: p.stat().st_mtime_ns for p in (day1 / "shards").iterdir()} == shard_files
    again = webhook.received[-1]["body"]
    assert again["status"] == "succeeded" and again["generated"] == 0 and again["already_committed"] == 16

    # Things under the prefix that latentmill did not write, or that are not this job's outputs.
    (root / "notes.txt").write_text("keep me")
    (root / "2026-11-18").mkdir()
    (root / "2026-11-18" / "data.csv").write_text("a,b\n")
    (root / "2026-11-19").mkdir()
    (root / "2026-11-19" / "latentmill.json").write_text(json.dumps({"name": "another-job"}))
    (day1 / "runs" / "README").write_text("a note someone left")  # makes day 1 more than latentmill's files
    assert run_nightly(root, "2026-11-21") == 0
    assert day1.exists(), "an output holding a foreign file is kept"
    assert "holds files latentmill did not write" in capsys.readouterr().err
    (day1 / "runs" / "README").unlink()

    assert run_nightly(root, "2026-11-21") == 0
    assert not day1.exists()
    assert (root / "notes.txt").read_text() == "keep me"
    assert (root / "2026-11-18" / "data.csv").exists() and (root / "2026-11-19" / "latentmill.json").exists()
    latest = json.loads((root / "latest.json").read_text())
    assert latest["date"] == "2026-11-21" and latest["url"] == str(root / "2026-11-21")
    last = webhook.received[-1]["body"]
    assert last["removed"] == [str(day1)] and last["latest"] == str(root / "latest.json")
    assert len(last["kept"]) == 2  # 2026-11-18 (not latentmill's) and 2026-11-19 (another job)
    assert cli_main(["verify", str(root / "2026-11-21")]) == 0
    # The webhook's token is in no payload and not in the saved spec.
    assert all(TOKEN not in json.dumps(r["body"]) for r in webhook.received)
    assert TOKEN not in (root / "2026-11-21" / "latentmill.json").read_text()


def test_a_failed_run_is_notified_and_publishes_nothing(ray_cluster, tmp_path, webhook, capsys):
    root = tmp_path / "nightly"
    (root / "2026-11-22").mkdir(parents=True)
    (root / "2026-11-22" / "foreign.bin").write_bytes(b"x")  # the dated output is taken: the run must fail
    assert run_nightly(root, "2026-11-22") == 2
    assert "not a latentmill job" in capsys.readouterr().err
    body = webhook.received[-1]["body"]
    assert body["status"] == "failed" and "not a latentmill job" in body["error"] and body["date"] == "2026-11-22"
    assert not (root / "latest.json").exists()


def test_a_webhook_that_never_answers_costs_at_most_its_timeout(capsys):
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(4)
    try:
        started = time.monotonic()
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/hook?token={TOKEN}"
        assert post_summary(NotifyConfig(webhook=url, timeout_s=1.0), {"status": "succeeded"}) is False
        assert time.monotonic() - started < 5
    finally:
        silent.close()
    err = capsys.readouterr().err
    assert "webhook to 127.0.0.1" in err and TOKEN not in err


def test_date_templates_and_bad_dates(tmp_path):
    prompts = tmp_path / "prompts-2026-11-20.txt"
    prompts.write_text("a\n")
    spec = load_spec(NIGHTLY, [f"output.url={tmp_path}/out/{{date}}", "prompts.inline=null",
                               f"prompts.file={tmp_path}/prompts-{{date}}.txt"], date="2026-11-20")
    assert spec.output.url == f"{tmp_path}/out/2026-11-20" and spec.prompts.file == str(prompts)
    assert spec.run_date.date == "2026-11-20" and spec.run_date.output_template == f"{tmp_path}/out/{{date}}"
    assert spec.identity() == load_spec(NIGHTLY, [f"output.url={tmp_path}/x/{{date}}"], date="2026-11-21").identity()
    # The saved spec parses again: run_date is the loader's, output.url keeps its template.
    saved = spec.to_dict()
    assert "run_date" not in saved and saved["output"]["url"] == f"{tmp_path}/out/{{date}}"
    assert parse_spec(yaml.safe_dump(saved), date="2026-11-20").output.url == spec.output.url
    for bad in ("2026-13-01", "2026-02-30", "20261120", "tomorrow", "2026-1-5"):
        with pytest.raises(ConfigError, match=f"--date '{bad}': expected a calendar date YYYY-MM-DD"):
            parse_date(bad)
    with pytest.raises(ConfigError, match="output.retention: needs \\{date\\} in output.url"):
        load_spec(NIGHTLY, [f"output.url={tmp_path}/fixed"])
    with pytest.raises(ConfigError, match="run_date: unknown field"):
        load_spec(NIGHTLY, ["run_date=2026-11-20"])
    for template in ("{date}", "s3://b/{date}/{date}", "s3://b/x{date}y/z"):
        if template == "s3://b/x{date}y/z":
            outputs = DatedOutputs(template)  # a date inside a segment is fine
            assert outputs.root == "s3://b" and outputs.segment.match("x2026-11-20y")
            continue
        with pytest.raises(ConfigError, match="must appear once"):
            DatedOutputs(template)


def test_run_with_an_invalid_date_is_a_usage_error(tmp_path, capsys):
    assert cli_main(["run", NIGHTLY, "--date", "2026-11-31", "--set", f"output.url={tmp_path}/{{date}}"]) == 2
    assert "--date '2026-11-31'" in capsys.readouterr().err
