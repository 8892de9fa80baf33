"""One writer per output: a lease that a driver takes before it changes anything under OUTPUT.

    OUTPUT/_lease/00000007.json   {owner, run_id, host, pid, taken_at, heartbeat_at, expires_at, ...}

Leases are numbered generations. The current lease is the highest number. A driver takes the
output by creating the next number with an exclusive create (local disk: O_EXCL; S3: a
conditional PUT, If-None-Match: *), which exactly one of any number of racing drivers wins, and
only when the current generation is released or expired. The holder alone rewrites its own file:
a heartbeat from a daemon thread moves `expires_at` forward, and release marks it released. A
killed driver stops renewing; once its lease expires the next driver takes over, says so, and
the run report records it. A holder that finds a higher generation (it stalled past its expiry
and was taken over) or cannot renew in time has lost the output and must stop writing.

`latentmill verify` and `report` only read and take no lease.
"""

from __future__ import annotations

import datetime as dt
import getpass
import json
import os
import posixpath
import socket
import sys
import threading
import time
import uuid
from typing import Callable

from pipelines.errors import OutputError
from pipelines.sinks.storage import create_exclusive, read_json, write_json

LEASE_DIR = "_lease"
GENERATION_DIGITS = 8


class LeaseHeld(OutputError):
    """Another driver holds the output's lease."""


def _iso(unix: float) -> str:
    return dt.datetime.fromtimestamp(unix, dt.timezone.utc).isoformat(timespec="seconds")


def describe_holder(record: dict, now: float | None = None) -> str:
    now = time.time() if now is None else now
    return (
        f"run {record.get('run_id')} of {record.get('owner')} on {record.get('host')} (pid {record.get('pid')}), "
        f"holding it since {record.get('taken_at')}, last heartbeat {max(0.0, now - record.get('heartbeat_unix', now)):.0f} s ago"
    )


class OutputLease:
    """The lease on one output for one run. `acquire()`, then `release()` when done (or use `with`)."""

    def __init__(self, layout, run_id: str, ttl_s: float):
        self.layout, self.run_id, self.ttl_s = layout, run_id, ttl_s
        self.token = uuid.uuid4().hex
        self.generation: int | None = None
        self.taken_over: dict | None = None  # the expired lease this run took over, if any
        self.lost: str | None = None  # why the lease was lost, once it is
        self.on_lost: Callable[[], None] | None = None  # called (from the heartbeat thread) when it is
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._expires_unix = 0.0
        self._taken_at = ""

    # -- files ---------------------------------------------------------------------------------

    def _path(self, generation: int) -> str:
        return self.layout.path(LEASE_DIR, f"{generation:0{GENERATION_DIGITS}d}.json")

    def _generations(self) -> list[int]:
        names = self.layout.retrying("listing the lease", lambda: self._list())
        return sorted(int(n[:-5]) for n in names if n.endswith(".json") and n[:-5].isdigit())

    def _list(self) -> list[str]:
        try:
            return [posixpath.basename(p.rstrip("/")) for p in self.layout.fs.ls(self.layout.path(LEASE_DIR), detail=False, refresh=True)]
        except FileNotFoundError:
            return []

    def _read(self, generation: int) -> dict | None:
        try:
            return self.layout.retrying("reading the lease", lambda: read_json(self.layout.fs, self._path(generation)))
        except FileNotFoundError:
            return None
        except json.JSONDecodeError:
            return {}  # half-written by a store without atomic writes: treat as expired

    def _record(self, now: float, released: bool = False) -> dict:
        return {
            "owner": f"{_user()}@{socket.gethostname()}",
            "run_id": self.run_id,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "token": self.token,
            "generation": self.generation,
            "taken_at": self._taken_at,
            "heartbeat_at": _iso(now),
            "heartbeat_unix": round(now, 3),
            "expires_at": _iso(now + self.ttl_s),
            "expires_unix": round(now + self.ttl_s, 3),
            "ttl_s": self.ttl_s,
            "released": released,
        }

    # -- taking and giving back ----------------------------------------------------------------

    def current(self) -> tuple[int, dict | None]:
        """(generation, record) of the highest lease; (0, None) when there is none."""
        generations = self._generations()
        if not generations:
            return 0, None
        return generations[-1], self._read(generations[-1])

    def try_acquire(self) -> dict | None:
        """Take the lease if it is free. Returns None when taken, else the holder's record."""
        while True:
            generation, record = self.current()
            now = time.time()
            if record is not None and record and not record.get("released") and record.get("expires_unix", 0) > now:
                return record
            self.generation = generation + 1
            self._taken_at = _iso(now)
            data = json.dumps(self._record(now), indent=2, sort_keys=True).encode()
            won = self.layout.retrying("taking the lease", lambda data=data: create_exclusive(self.layout.fs, self._path(self.generation), data))
            if not won:
                continue  # another driver took this generation first: look at it
            self._expires_unix = now + self.ttl_s
            if record and not record.get("released"):
                self.taken_over = record
            self._remove_older()
            self._thread = threading.Thread(target=self._heartbeat, name="latentmill-lease", daemon=True)
            self._thread.start()
            return None

    def acquire(self, wait: bool = False, poll_s: float = 1.0) -> "OutputLease":
        announced = False
        while True:
            holder = self.try_acquire()
            if holder is None:
                if self.taken_over:
                    print(f"latentmill: took over the expired lease on {self.layout.url}: "
                          f"{describe_holder(self.taken_over)}", file=sys.stderr)
                return self
            if not wait:
                raise LeaseHeld(
                    f"{self.layout.url} is being written by another latentmill driver: {describe_holder(holder)}. "
                    f"Rerun with --wait to start when it is done; if that driver is gone, its lease expires at "
                    f"{holder.get('expires_at')} and the next run takes over"
                )
            if not announced:
                print(f"latentmill: waiting for {self.layout.url}: {describe_holder(holder)}", file=sys.stderr)
                announced = True
            time.sleep(poll_s)

    def _remove_older(self) -> None:
        for generation in self._generations():
            if generation < self.generation:
                self.layout.retrying("removing an old lease", lambda g=generation: self.layout.fs.rm(self._path(g)))

    def _heartbeat(self) -> None:
        interval = self.ttl_s / 4
        while not self._stop.wait(interval):
            try:
                self.renew()
            except Exception as exc:  # storage trouble: keep trying until the lease would expire
                if time.time() >= self._expires_unix:
                    self.lost = f"could not renew the lease before it expired ({type(exc).__name__}: {exc})"
            if self.lost:
                if self.on_lost is not None:
                    self.on_lost()
                return

    def renew(self) -> None:
        newer = [g for g in self._list_generations_quietly() if g > self.generation]
        if newer:
            self.lost = f"another driver took the output over (lease generation {newer[-1]})"
            return
        now = time.time()
        if now >= self._expires_unix:
            self.lost = "the lease expired before it could be renewed"
            return
        write_json(self.layout.fs, self._path(self.generation), self._record(now))
        self._expires_unix = now + self.ttl_s

    def _list_generations_quietly(self) -> list[int]:
        return sorted(int(n[:-5]) for n in self._list() if n.endswith(".json") and n[:-5].isdigit())

    def check(self) -> None:
        """Raise when the lease was lost: the driver must stop changing the output."""
        if self.lost:
            raise OutputError(f"{self.layout.url}: this run no longer holds the output's lease: {self.lost}; stopped")

    def release(self) -> None:
        if self.generation is None:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if not self.lost:
            now = time.time()
            try:
                self.layout.retrying("releasing the lease", lambda: write_json(self.layout.fs, self._path(self.generation), self._record(now, released=True)))
            except Exception as exc:  # storage down: the run's own outcome matters more; the lease expires
                print(f"warning: could not release the lease on {self.layout.url} ({type(exc).__name__}: {exc}); "
                      f"it expires at {_iso(self._expires_unix)}", file=sys.stderr)
        self.generation = None

    def __enter__(self) -> "OutputLease":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no user name in some containers
        return f"uid{os.getuid()}"
