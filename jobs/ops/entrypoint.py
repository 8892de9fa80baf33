"""The shell command a submitted job runs on the cluster's head (Ray Jobs runs it with /bin/sh).

Ray runs the entrypoint in the environment `ray start` had. Started by absolute path from a venv
(`/opt/venv/bin/ray start ...`), that PATH has no `latentmill`, and `python` may be another Python
or none (measured with Ray 2.60: the job then failed with exit 127, `latentmill: not found`). So the
command tries, in order:
1. `latentmill` on the PATH;
2. the Python that runs Ray on the head, with `-m jobs.cli`: the shell's parent is Ray's job
   supervisor, a Python process whose memory map names the `ray/_raylet.so` it loaded, under
   PREFIX/lib/pythonX.Y/site-packages; PREFIX/bin/python is that Python (a venv's, not the base
   interpreter that /proc/PID/exe resolves to). It is used only if it can import latentmill;
3. otherwise one line on stderr saying what is missing and how to fix it, and exit 127.
"""

from __future__ import annotations

import shlex

RAYLET_SO = r"/[^ ]*/lib/python3\.[0-9]*/site-packages/ray/_raylet\.so"


def job_entrypoint(arguments: list[str]) -> str:
    """`latentmill ARGUMENTS...` as a POSIX shell command that finds latentmill on the head."""
    args = " ".join(shlex.quote(a) for a in arguments)
    return (
        f"if command -v latentmill >/dev/null 2>&1; then exec latentmill {args}; fi; "
        f"py=\"$(grep -o -m1 '{RAYLET_SO}' /proc/$PPID/maps 2>/dev/null "
        "| sed 's#/lib/python3\\.[0-9]*/site-packages/ray/_raylet\\.so$#/bin/python#')\"; "
        f"if [ -x \"$py\" ] && \"$py\" -c 'import jobs.cli' 2>/dev/null; then exec \"$py\" -m jobs.cli {args}; fi; "
        "echo \"latentmill: not on the PATH of this Ray cluster's head, and the Python that runs Ray "
        "(${py:-not found}) cannot import it: install latentmill into that Python, or start Ray with its "
        "environment's bin/ on the PATH (PATH=VENV/bin:\\$PATH ray start ...)\" >&2; exit 127"
    )
