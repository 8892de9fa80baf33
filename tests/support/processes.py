"""Processes a test starts, ended when the test ends however it ends.

Each process gets a session (process group) of its own, so ending it ends what it started too
(a driver's local Ray, a shell's children), and is killed by the kernel if the test process dies
first (a timeout that exits the interpreter, a crash): nothing a test starts outlives it.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import time

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # runs in the child between fork and exec
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def end_group(process: subprocess.Popen, grace_s: float = 5.0) -> None:
    """SIGTERM the process's group (a driver then lets go of its lease), SIGKILL it if it is still
    there after `grace_s`, and reap the process."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except (ProcessLookupError, PermissionError):  # the group is gone (PermissionError: a zombie leader on macOS)
            break
        try:
            process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            continue
        if not _group_alive(process.pid):
            break
        time.sleep(0.2)
    process.wait()


def _group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
        return True
    except (ProcessLookupError, PermissionError):
        return False


class Processes:
    """Starts processes for one test and ends every one of them in `end_all` (the `processes`
    fixture calls it in its teardown, which runs also when the test fails or times out)."""

    def __init__(self):
        self.started: list[subprocess.Popen] = []

    def start(self, command: list[str], **popen_kwargs) -> subprocess.Popen:
        process = subprocess.Popen(command, start_new_session=True, preexec_fn=_die_with_parent, **popen_kwargs)
        self.started.append(process)
        return process

    def run(self, command: list[str], timeout: float, capture_output: bool = True, text: bool = True,
            **popen_kwargs) -> subprocess.CompletedProcess:
        """subprocess.run, except that a timeout ends the whole process group (subprocess.run kills
        only the process, leaving what it started)."""
        if capture_output:
            popen_kwargs.update(stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        process = self.start(command, text=text, **popen_kwargs)
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            end_group(process, grace_s=1.0)
            stdout, stderr = process.communicate()
            raise subprocess.TimeoutExpired(command, timeout, stdout, stderr) from None
        finally:
            end_group(process, grace_s=1.0)  # what it left in its group
        return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)

    def end_all(self) -> None:
        for process in reversed(self.started):
            end_group(process)
            for stream in (process.stdin, process.stdout, process.stderr):
                if stream:
                    stream.close()
