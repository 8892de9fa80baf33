"""Running a job in a test while the test interferes with it: in a thread, waiting for its first commit."""

from __future__ import annotations

import threading
import time

from jobs.local import run_job
from pipelines.sinks.layout import OutputLayout


def run_in_thread(spec, **kwargs):
    """Run a job in a thread; returns (thread, outcome) where outcome gets 'report' or 'error'."""
    outcome: dict = {}

    def target():
        try:
            outcome["report"] = run_job(spec, progress=False, **kwargs)
        except Exception as exc:  # handed to the test, which asserts on it
            outcome["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, outcome


def committed_markers(spec) -> dict[str, dict]:
    return OutputLayout(spec.output.url, spec.output.storage).committed_markers()


def wait_for_commit(spec, thread, timeout=120.0, beyond: int = 0):
    """Until the job's output holds more than `beyond` committed shards (the job must be running meanwhile)."""
    layout = OutputLayout(spec.output.url, spec.output.storage)
    deadline = time.monotonic() + timeout
    while not (layout.read_job() and len(layout.committed_markers()) > beyond):
        assert thread.is_alive(), f"the job ended before committing more than {beyond} shards"
        assert time.monotonic() < deadline, "no shard committed in time"
        time.sleep(0.1)
