"""Every damaged state repairable by the command its message names; exit codes that agree with
verify; the checks a run makes before it starts Ray (issue 21, sections 2 and 3)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys

import pytest
import yaml

from jobs.local import run_job
from jobs.spec import parse_spec
from pipelines.errors import OutputConflict
from pipelines.plan import build_plan
from pipelines.sinks.layout import OutputLayout
from pipelines.verify import verify_output
from tests.support.jobspecs import spec_dict

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLI = [sys.executable, "-m", "jobs.cli"]


def cli(*args, timeout=300, env=None):
    return subprocess.run(CLI + [str(a) for a in args], cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def one_clear_line(done) -> str:
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert "Traceback" not in done.stderr and len(lines) == 1, done.stderr[-3000:]
    return lines[0]


@pytest.fixture(scope="module")
def finished(ray_cluster, tmp_path_factory):
    """A finished 2-shard job and its spec file."""
    root = tmp_path_factory.mktemp("repair")
    spec_path = root / "job.yaml"
    spec_path.write_text(yaml.safe_dump(spec_dict(root / "out", num_images=16)))
    run_job(parse_spec(spec_path.read_text()), progress=False)
    return spec_path, root / "out"


def copy_of(finished, tmp_path):
    spec_path, out = finished
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    spec = tmp_path / "job.yaml"
    spec.write_text(yaml.safe_dump(spec_dict(copy, num_images=16)))
    return spec, copy


# -- section 2: damaged states and the command that repairs them --------------------------------


@pytest.mark.parametrize("damage", ["truncated", "not a marker"])
def test_a_damaged_commit_marker_is_named_by_verify_and_a_plain_rerun_regenerates_its_shard(finished, tmp_path, damage):
    spec, copy = copy_of(finished, tmp_path)
    marker = copy / "shards" / "00001.done.json"
    text = marker.read_text()
    marker.write_text(text[: len(text) // 2] if damage == "truncated" else json.dumps(["a list"]))

    done = cli("verify", copy)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert "shards/00001.done.json is not valid" in done.stdout
    assert "repair: rerun `latentmill run SPEC`" in done.stdout

    report = run_job(parse_spec(spec.read_text()), progress=False)
    assert report["generated"] == 8 and any("shard 00001 is generated again: its commit marker" in n
                                             for n in report["notes"])
    assert verify_output(str(copy))["ok"]
    assert json.loads(marker.read_text())["samples"] == 8


def test_an_invalid_job_record_is_one_line_and_exit_2_saying_what_it_is_and_what_to_do(finished, tmp_path):
    spec, copy = copy_of(finished, tmp_path)
    (copy / "latentmill.json").write_text('{"name": "test-job", "iden')
    for command in (["verify", copy], ["report", copy], ["run", spec, "--quiet", "--address", "127.0.0.1:1"]):
        done = cli(*command)
        line = one_clear_line(done)
        assert done.returncode == 2, (command, done.returncode, line)
        assert "latentmill.json, the job record" in line and "not valid JSON" in line, line
        assert "output.mode=overwrite" in line, line
    # The remedy it names is accepted: overwrite deletes what the output held and claims it anew.
    plan = build_plan(["a fox"], images_per_prompt=1, num_images=2, seed=1, samples_per_shard=2)
    record = {"name": "new", "planned": 2, "shards": 1, "identity": {"plan_sha256": plan.digest()}}
    assert OutputLayout(str(copy)).claim(record, plan, "overwrite") == "overwrite"
    assert not (copy / "shards").exists() and OutputLayout(str(copy)).read_job()["name"] == "new"


def test_changed_bytes_are_repaired_by_the_command_verify_names(finished, tmp_path):
    spec, copy = copy_of(finished, tmp_path)
    tar = copy / "shards" / "00000.tar"
    data = bytearray(tar.read_bytes())
    data[700] ^= 0xFF  # same size: only a sha256 tells
    tar.write_bytes(bytes(data))

    done = cli("verify", copy, "--check", "full")
    assert done.returncode == 1
    hints = [line for line in done.stdout.splitlines() if line.startswith("repair:")]
    assert hints == ["repair: rerun `latentmill run SPEC --check full` on this output: shards 00000 differ from their "
                     "markers in content, not size, which a plain rerun does not check"], done.stdout
    # Why the plain rerun is not the hint: it finds nothing to do and leaves the changed bytes.
    assert cli("run", spec, "--quiet").returncode == 0
    assert not verify_output(str(copy), full=True)["ok"]
    report = run_job(parse_spec(spec.read_text()), progress=False, check_full=True)
    assert report["generated"] == 8
    assert verify_output(str(copy), full=True)["ok"]


def _claim_other(copy, change):
    """Claim `copy` (holding the finished job) for a job whose identity differs by `change`."""
    layout = OutputLayout(str(copy))
    existing = layout.read_job()
    identity = json.loads(json.dumps(existing["identity"]))
    change(identity)
    plan = build_plan(["a red fox", "a blue whale", "a green frog"], images_per_prompt=4, num_images=24, seed=7,
                      samples_per_shard=8)
    identity["plan_sha256"] = plan.digest()
    record = {**existing, "identity": identity, "planned": 24, "shards": 3}
    return layout, record, plan


def test_a_refusal_for_changed_weights_suggests_only_remedies_that_are_accepted(finished, tmp_path):
    _, copy = copy_of(finished, tmp_path)

    def new_weights(identity):
        identity["weights"]["model"] = "0" * 64

    layout, record, plan = _claim_other(copy, new_weights)
    with pytest.raises(OutputConflict) as refused:
        layout.claim(record, plan, "error")
    message = str(refused.value)
    assert "weights.model" in message and "overwrite" in message and "restore the weights" in message
    assert "extend" not in message
    with pytest.raises(OutputConflict, match="extend needs the same"):  # what the old message suggested
        layout.claim(record, plan, "extend")
    assert layout.claim(record, plan, "overwrite") == "overwrite"

    # Where only the plan grows, extend is a remedy, and it is accepted.
    _, copy = copy_of(finished, tmp_path / "again")
    layout, record, plan = _claim_other(copy, lambda identity: None)
    with pytest.raises(OutputConflict, match="extend") as refused:
        layout.claim(record, plan, "error")
    assert layout.claim(record, plan, "extend") == "extend"


def test_a_refusal_for_another_device_kind_names_only_accepted_remedies(finished, tmp_path):
    _, copy = copy_of(finished, tmp_path)
    layout = OutputLayout(str(copy))
    with pytest.raises(OutputConflict) as refused:
        layout.check_devices({"decode": ["cuda"], "denoise": ["cuda"]})
    assert "extend" not in str(refused.value) and "overwrite" not in str(refused.value)
    assert "same kind of device" in str(refused.value) and "another output.url" in str(refused.value)


# -- section 3: exit codes and the checks before Ray starts -------------------------------------


def test_run_exits_1_while_the_output_holds_failed_samples_as_verify_does(ray_cluster, tmp_path):
    spec = tmp_path / "job.yaml"
    spec.write_text(yaml.safe_dump(spec_dict(tmp_path / "out", num_images=8, stages__max_retries=0)))
    done = cli("run", spec, "--quiet", "--address", ray_cluster, "--inject-fault", "decode:raise:000000003")
    assert done.returncode == 1, done.stderr[-3000:]
    assert "error: 1 samples failed" in done.stderr and "--retry-failed" in done.stderr
    assert cli("verify", tmp_path / "out").returncode == 1
    rerun = cli("run", spec, "--quiet")  # nothing to do, and still not what verify accepts
    assert (rerun.returncode, cli("verify", tmp_path / "out").returncode) == (1, 1), rerun.stderr[-2000:]
    retried = cli("run", spec, "--quiet", "--address", ray_cluster, "--retry-failed")
    assert (retried.returncode, cli("verify", tmp_path / "out").returncode) == (0, 0), retried.stderr[-2000:]


@contextlib.contextmanager
def immutable(folder):
    """A folder even root cannot write to (chattr +i): permission bits do not stop root."""
    subprocess.run(["chattr", "+i", str(folder)], check=True, capture_output=True)
    try:
        yield folder
    finally:
        subprocess.run(["chattr", "-i", str(folder)], check=True)


def _read_only_dir(tmp_path):
    folder = tmp_path / "read-only"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
        return contextlib.nullcontext(folder)
    if shutil.which("chattr") is None:
        pytest.skip("running as root without chattr: no folder here refuses root's writes")
    return immutable(folder)


@pytest.mark.parametrize("where", ["proc", "sys", "under a file", "read-only folder"])
@pytest.mark.parametrize("dry_run", [True, False])
def test_an_output_that_cannot_be_written_is_one_line_and_exit_2_before_ray_starts(tmp_path, where, dry_run):
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    spec = tmp_path / "job.yaml"
    expected = {"proc": "under /proc", "sys": "under /sys", "under a file": "is a file, not a folder",
                "read-only folder": "cannot be written"}[where]
    with _read_only_dir(tmp_path) as read_only:
        url = {"proc": "/proc/latentmill-out", "sys": "/sys/latentmill-out", "under a file": f"{a_file}/out",
               "read-only folder": f"{read_only}/out"}[where]
        spec.write_text(yaml.safe_dump(spec_dict(url, num_images=8)))
        # No cluster answers at this address: reaching Ray would fail otherwise, and slowly.
        done = cli("run", spec, "--quiet", *(["--dry-run"] if dry_run else []), env={"RAY_ADDRESS": "127.0.0.1:1"},
                   timeout=120)
        line = one_clear_line(done)
        assert done.returncode == 2 and line.startswith("error: output.url: ") and expected in line, line
        assert not any(name.startswith("index.json.tmp-probe") for name in os.listdir(read_only))


def test_dry_run_checks_fault_syntax_and_stages(tmp_path):
    spec = tmp_path / "job.yaml"
    spec.write_text(yaml.safe_dump(spec_dict(tmp_path / "out", num_images=8)))
    for fault, expected in (("denoise:explode:1", "expected STAGE:KIND:KEY"), ("encode:raise:1", "has no stage 'encode'")):
        done = cli("run", spec, "--dry-run", "--inject-fault", fault)
        line = one_clear_line(done)
        assert done.returncode == 2 and expected in line, line
    assert cli("run", spec, "--dry-run", "--inject-fault", "denoise:raise:000000001").returncode == 0
    assert not (tmp_path / "out").exists()


def _descendants(pid: int) -> list:
    import psutil

    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _names(processes) -> set[str]:
    import psutil

    names = set()
    for p in processes:
        with contextlib.suppress(psutil.Error):
            names.add(p.name())
    return names


def _running(processes) -> list:
    import psutil

    left = []
    for p in processes:
        with contextlib.suppress(psutil.Error):
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                left.append(p)
    return left


def test_a_driver_killed_with_sigkill_leaves_no_process_of_the_local_ray_it_started(tmp_path):
    import signal
    import time

    spec = tmp_path / "job.yaml"
    spec.write_text(yaml.safe_dump(spec_dict(tmp_path / "out", num_images=64, sampler__steps=8)))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # the driver starts a local Ray of its own
    driver = subprocess.Popen(CLI + ["run", str(spec), "--quiet"], cwd=REPO, env=env, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    started: list = []
    try:
        deadline = time.monotonic() + 240
        while not {"ray::DashboardAgent", "ray::RuntimeEnvAgent", "raylet"} <= _names(started):
            assert driver.poll() is None, "the driver ended before its local Ray was up"
            assert time.monotonic() < deadline, f"the local Ray did not start in time: {_names(started)}"
            time.sleep(0.5)
            started = _descendants(driver.pid)
        time.sleep(1.0)  # past the watcher's refresh interval
        started = _descendants(driver.pid)
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=30)
        deadline = time.monotonic() + 60
        while _running(started) and time.monotonic() < deadline:
            time.sleep(0.5)
        left = [(p.pid, p.name()) for p in _running(started)]
        assert not left, f"still running 60 s after the driver was killed: {left}"
    finally:
        for p in _running(started):
            with contextlib.suppress(Exception):
                p.kill()
        if driver.poll() is None:
            driver.kill()
            driver.wait()


@pytest.fixture
def token_cluster(tmp_path):
    """A `ray start --head` with token authentication (its own temp dir, so no other driver finds it)."""
    import socket
    import tempfile
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ray_tmp = tempfile.mkdtemp(prefix="lm-tok-", dir="/tmp")  # short: Ray's socket paths live under it
    env = {**os.environ, "RAY_TMPDIR": ray_tmp, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "f" * 32,
           "HOME": str(tmp_path)}
    env.pop("RAY_ADDRESS", None)
    ray_bin = os.path.join(os.path.dirname(sys.executable), "ray")
    head = subprocess.Popen([ray_bin, "start", "--head", "--block", "--port", str(port), "--num-cpus", "1",
                             "--include-dashboard=false", "--disable-usage-stats"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    started: list = []
    try:
        deadline = time.monotonic() + 180
        while True:
            assert head.poll() is None and time.monotonic() < deadline, "the token-auth head did not start"
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.5)
        started = _descendants(head.pid)
        yield f"127.0.0.1:{port}", ray_tmp
    finally:
        started = {p.pid: p for p in started + _descendants(head.pid)}.values()
        head.kill()
        head.wait()
        for p in _running(list(started)):
            with contextlib.suppress(Exception):
                p.kill()
        shutil.rmtree(ray_tmp, ignore_errors=True)


@pytest.mark.parametrize("mode", ["unset", "token"])
def test_a_token_auth_cluster_without_a_token_is_one_line_naming_the_variables(token_cluster, tmp_path, mode):
    address, ray_tmp = token_cluster
    spec = tmp_path / "job.yaml"
    spec.write_text(yaml.safe_dump(spec_dict(tmp_path / "out", num_images=2)))
    env = {"HOME": str(tmp_path), "RAY_TMPDIR": ray_tmp, "RAY_AUTH_TOKEN": "", "RAY_AUTH_MODE": mode}
    env = {k: v for k, v in {**os.environ, **env}.items() if not (k.startswith("RAY_AUTH") and v in ("", "unset"))}
    done = subprocess.run(CLI + ["run", str(spec), "--quiet", "--address", address], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=180)
    line = one_clear_line(done)
    assert done.returncode == 2 and "RAY_AUTH_TOKEN" in line and "RAY_AUTH_MODE" in line, line
    assert "uses token authentication" in line
