"""Ends the processes of the local Ray a driver started, when that driver dies in any way.

A driver that exits normally shuts its local Ray down (ray.shutdown at exit). Killed with SIGKILL
it cannot: Ray ties gcs_server and the raylet to the driver (PR_SET_PDEATHSIG), but the agents the
raylet starts (dashboard agent, runtime-env agent) outlive it, measured with Ray 2.60
(tests/test_repair.py). PR_SET_PDEATHSIG cannot be set on them from here (it is a property a
process sets on itself, and Ray starts them), and a process group does not help either: nothing is
left to signal the group once the driver is gone. So a small watcher process does it:

- it reads a pipe whose only writer is the driver: end of file means the driver is gone, however
  it died (no polling of its pid, which the system may reuse);
- meanwhile it keeps a list of the driver's descendants (pid and start time, refreshed every
  `INTERVAL_S`), which is where a local Ray's processes are, and only those: a cluster the driver
  merely connects to is not its descendant and is never touched;
- when the driver is gone it ends what is left of that list (SIGTERM, then SIGKILL after a grace
  period) and exits. After a normal exit that finds nothing left to end.

Run as `python -m jobs.ray_reaper DRIVER_PID`, started by `start_reaper()` in the driver.
"""

from __future__ import annotations

import os
import select
import subprocess
import sys

INTERVAL_S = 0.5
GRACE_S = 3.0


def start_reaper() -> subprocess.Popen:
    """Start the watcher for this process; keep the returned Popen alive (its stdin is the pipe)."""
    return subprocess.Popen(
        [sys.executable, "-m", "jobs.ray_reaper", str(os.getpid())],
        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,  # a Ctrl-C or kill of the driver's process group leaves the watcher to clean up
        close_fds=True,
    )


def watch(driver_pid: int, pipe_fd: int) -> None:
    # lazy: keeps psutil out of processes that never call this
    import psutil

    try:
        driver = psutil.Process(driver_pid)
    except psutil.NoSuchProcess:
        return
    seen: dict[int, psutil.Process] = {}
    while True:
        try:
            for child in driver.children(recursive=True):
                if child.pid != os.getpid():
                    seen.setdefault(child.pid, child)
        except psutil.NoSuchProcess:
            break
        if select.select([pipe_fd], [], [], INTERVAL_S)[0] and not os.read(pipe_fd, 4096):
            break  # end of file: the driver is gone
    end_all(seen)


def end_all(seen: dict) -> None:
    """SIGTERM to every process still running (the same process: psutil compares start times),
    and to their own children started since, then SIGKILL to those that remain after GRACE_S."""
    # lazy: keeps psutil out of processes that never call this
    import psutil

    alive = [p for p in seen.values() if p.is_running()]
    for p in list(alive):
        try:
            alive += [c for c in p.children(recursive=True) if c.pid not in seen]
        except psutil.NoSuchProcess:
            pass
    for p in alive:
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    _, left = psutil.wait_procs(alive, timeout=GRACE_S)
    for p in left:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass


if __name__ == "__main__":
    watch(int(sys.argv[1]), sys.stdin.fileno())
