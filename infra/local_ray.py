"""A local Ray head with its dashboard and Jobs server, for trying `latentmill submit` and for tests.

    python -m infra.local_ray --num-cpus 2

starts `ray start --head --block` on 127.0.0.1 with every port chosen free (so it never collides
with another Ray on the machine), its own temp dir and token authentication, prints the address
and token to export, and stops the head (its whole process group) on Ctrl-C. `ray stop` is never
used: it would stop every Ray of the user on the machine.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

from infra.local_s3 import free_port

_PORT_FLAGS = ("--port", "--dashboard-port", "--ray-client-server-port", "--dashboard-agent-listen-port",
               "--dashboard-agent-grpc-port", "--runtime-env-agent-port", "--metrics-export-port",
               "--node-manager-port", "--object-manager-port")


class LocalRayHead:
    """`ray start --head` in its own process group; `close()` ends all of it."""

    def __init__(self, num_cpus: int = 2, num_gpus: int = 0, object_store_mb: int = 200, env: dict | None = None,
                 start_timeout_s: float = 90.0, venv_on_path: bool = True):
        """`venv_on_path=False`: Ray started by the venv's absolute path with the venv's bin/ not on PATH."""
        self.temp_dir = tempfile.mkdtemp(prefix="lm-ray-", dir="/tmp")  # short: Ray's socket paths have a limit
        ports = {flag: free_port() for flag in _PORT_FLAGS}
        self.address = f"http://127.0.0.1:{ports['--dashboard-port']}"
        self.gcs_address = f"127.0.0.1:{ports['--port']}"
        self.token = secrets.token_hex(32)
        # What a client needs besides the address; the head's processes (and jobs) get it too.
        self.client_env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token}
        venv_bin = os.path.dirname(sys.executable)
        path = [p for p in os.environ.get("PATH", "").split(os.pathsep) if p and p != venv_bin]
        head_env = {**os.environ, **(env or {}), **self.client_env,
                    "PATH": os.pathsep.join(([venv_bin] if venv_on_path else []) + path)}
        head_env.pop("RAY_ADDRESS", None)  # this head is a new cluster, not a client of another
        command = [os.path.join(venv_bin, "ray"), "start", "--head", "--block", "--node-ip-address", "127.0.0.1",
                   "--dashboard-host", "127.0.0.1", "--include-dashboard", "true", "--disable-usage-stats",
                   "--num-cpus", str(num_cpus), "--num-gpus", str(num_gpus),
                   "--object-store-memory", str(object_store_mb * 1024 * 1024), "--temp-dir", self.temp_dir]
        for flag, port in ports.items():
            command += [flag, str(port)]
        self.log_path = os.path.join(self.temp_dir, "ray-start.log")
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(command, env=head_env, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        try:
            self._wait_ready(start_timeout_s)
        except BaseException:
            self.close()
            raise

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"ray start exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                request = urllib.request.Request(f"{self.address}/api/jobs/",
                                                 headers={"Authorization": f"Bearer {self.token}"})
                with urllib.request.urlopen(request, timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"the Ray head's Jobs API did not answer within {timeout_s:.0f} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        with open(self.log_path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])

    def close(self) -> None:
        """SIGTERM the process group (ray start shuts its processes down), SIGKILL what is left."""
        group = self.process.pid
        for sig, wait_s in ((signal.SIGTERM, 8.0), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(group, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + wait_s
            while time.monotonic() < deadline and _group_alive(group):
                time.sleep(0.2)
            if not _group_alive(group):
                break
        self.process.wait(timeout=5)
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
        return True
    except ProcessLookupError:
        return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-cpus", type=int, default=2)
    parser.add_argument("--num-gpus", type=int, default=0, help="logical GPUs (none needed to exist)")
    args = parser.parse_args(argv)
    head = LocalRayHead(num_cpus=args.num_cpus, num_gpus=args.num_gpus)
    print(f"export RAY_ADDRESS={head.address}")
    print(f"export RAY_AUTH_TOKEN={head.token}")
    print("# Ctrl-C stops the head", flush=True)
    try:
        while head.process.poll() is None:
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        head.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
