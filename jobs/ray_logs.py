"""Ray's own lines off the user's screen: its logger's warnings go to a file in Ray's session logs.

Ray's driver-side logger (`ray`, and its children: ray.train, ray.data, ...) prints warnings such as
the token-authentication notice while `ray.init` runs; workers' output and task-retry notices reach
the driver only with `log_to_driver`, which the command line turns off unless `--verbose`, and the
raylet's notices (task retries) are not printed either. What
the logger says before Ray knows its session folder is held in memory, then written to
SESSION/logs/latentmill-driver.log with everything it says later; if `ray.init` fails it is shown,
since it may be why.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass

LOG_NAME = "latentmill-driver.log"


@dataclass
class Aside:
    path: str | None = None


@contextmanager
def ray_logs_aside(enabled: bool = True):
    """Around `ray.init`: with `enabled`, the `ray` logger writes to a file, not to the terminal."""
    aside = Aside()
    if not enabled:
        yield aside
        return
    logger = logging.getLogger("ray")
    saved = (list(logger.handlers), logger.propagate)
    buffer = logging.handlers.MemoryHandler(capacity=100_000, flushLevel=logging.CRITICAL + 1)
    for handler in saved[0]:
        logger.removeHandler(handler)
    logger.addHandler(buffer)
    logger.propagate = False
    try:
        yield aside
    except BaseException:
        buffer.setTarget(logging.StreamHandler(sys.stderr))  # the failed start may be explained there
        buffer.flush()
        logger.removeHandler(buffer)
        for handler in saved[0]:
            logger.addHandler(handler)
        logger.propagate = saved[1]
        raise
    aside.path = os.path.join(_logs_dir(), LOG_NAME)
    to_file = logging.FileHandler(aside.path)
    to_file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    buffer.setTarget(to_file)
    buffer.flush()
    logger.removeHandler(buffer)
    logger.addHandler(to_file)
    quiet_error_notices()


def quiet_error_notices() -> None:
    """The driver's error-notice thread prints the raylet's notices ("Task X failed. There are 3
    retries remaining") to stdout even without log_to_driver. They stay in the raylet's own log;
    the scheduler tells the user of an actor that died, in its own words. The switch is Ray's
    (ray.util.rpdb turns it off the same way while a debugger holds the terminal)."""
    import ray._private.worker as ray_worker  # Ray is imported by now (ray.init ran)

    ray_worker._worker_logs_enabled = False


def _logs_dir() -> str:
    """This node's Ray session logs folder (a temporary folder if Ray does not say)."""
    try:
        import ray._private.worker as ray_worker  # Ray is imported by now (ray.init ran)

        path = ray_worker.global_worker.node.get_logs_dir_path()
        os.makedirs(path, exist_ok=True)
        return path
    except Exception:
        return tempfile.mkdtemp(prefix="latentmill-ray-logs-")
