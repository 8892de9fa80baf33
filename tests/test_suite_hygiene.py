"""The suite's own guards, in a test session of their own (pytester, a subprocess): a test's
leftover actor and driver on the shared Ray cluster are ended before the next test, a failing
test's processes are ended, and a stuck test times out with its stack instead of hanging."""

from __future__ import annotations

import json
import os

import psutil

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INNER_TESTS = '''
import json, os, subprocess, sys, time

import pytest
import ray

RECORD = os.environ["HYGIENE_RECORD"]


def record(**pids):
    old = {}
    if os.path.exists(RECORD):
        with open(RECORD) as f:
            old = json.load(f)
    with open(RECORD, "w") as f:
        json.dump({**old, **pids}, f)


@ray.remote
class Lingering:
    def pid(self):
        return os.getpid()


def test_leaves_an_actor_and_a_driver_behind(ray_cluster):
    kept = Lingering.options(name="lingering", lifetime="detached").remote()
    program = "import ray, sys, time; ray.init(address=sys.argv[1]); print('up', flush=True); time.sleep(3600)"
    driver = subprocess.Popen([sys.executable, "-c", program, ray_cluster], stdout=subprocess.PIPE, text=True)
    assert driver.stdout.readline() == "up\\n"
    record(actor=ray.get(kept.pid.remote()), driver=driver.pid)


def test_the_next_test_finds_neither(ray_cluster):
    from ray._private import state

    assert [a["ActorClassName"] for a in state.actors().values() if a["State"] != "DEAD"] == []
    own = ray.get_runtime_context().get_job_id()
    assert [j["JobID"] for j in state.jobs() if not j["IsDead"] and j["JobID"] != own] == []


def test_a_failing_test(processes):
    program = ("import subprocess, sys, time; child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(3600)']);"
               "print(child.pid, flush=True); time.sleep(3600)")
    parent = processes.start([sys.executable, "-c", program], stdout=subprocess.PIPE, text=True)
    record(failing_parent=parent.pid, failing_child=int(parent.stdout.readline()))
    assert False, "deliberately"


@pytest.mark.timeout(3)
def test_a_stuck_test(processes):
    stuck = processes.start([sys.executable, "-c", "import time; time.sleep(3600)"])
    record(stuck=stuck.pid)
    time.sleep(3600)
'''


def test_leftovers_are_ended_and_a_stuck_test_fails_with_its_stack(pytester, tmp_path, monkeypatch):
    record = tmp_path / "pids.json"
    monkeypatch.setenv("HYGIENE_RECORD", str(record))
    # The inner session runs in a temporary folder: it finds `tests.conftest` through the repository root.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")])))
    pytester.makepyfile(test_inner=INNER_TESTS)
    result = pytester.runpytest_subprocess("-p", "tests.conftest", "-p", "no:cacheprovider", "-q", timeout=300)
    output = result.stdout.str()
    result.assert_outcomes(passed=2, failed=2)
    assert "ended what this test left on the shared Ray cluster" in output
    assert "actor Lingering 'lingering'" in output and "driver of job" in output
    assert "AssertionError: deliberately" in output
    # The stuck test: failed by its timeout, with the line it was stuck on and every other thread's stack.
    assert "Failed: Timeout (>3.0s) from pytest-timeout" in output and ">       time.sleep(3600)" in output
    assert "+ Timeout +" in output and "~ Stack of " in output
    pids = json.loads(record.read_text())
    assert set(pids) == {"actor", "driver", "failing_parent", "failing_child", "stuck"}
    left = [name for name, pid in pids.items() if _running(pid)]
    assert left == [], f"still running: {left}"


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
