"""The `latentmill` command line.

Exit codes, for every command: 0 ok; 1 the job or the output failed (the message says what, and
what to rerun); 2 a usage or spec error; 130 stopped with Ctrl-C (committed shards kept).
"""

from __future__ import annotations

import argparse
import sys

from jobs.cli import bench, cluster, k8s, outputs, run
from pipelines.errors import Interrupted, LatentmillError

COMMAND_GROUPS = (run, cluster, k8s, outputs, bench)  # the order of `latentmill --help`


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="latentmill", description="Generate image datasets with diffusion models on Ray.")
    commands = parser.add_subparsers(dest="command", required=True)
    for group in COMMAND_GROUPS:
        group.add_parser(commands)
    args, rest = parser.parse_known_args(argv)
    if rest and not getattr(args, "passthrough", False):
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    args.rest = rest
    try:
        return args.func(args)
    except Interrupted as exc:
        print(exc, file=sys.stderr)
        return exc.exit_code
    except LatentmillError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted; committed shards are kept, rerun the same command to resume", file=sys.stderr)
        return 130
