"""`latentmill browse OUTPUT`: a local web page over an output, or its static export."""

from __future__ import annotations

from jobs.cli.common import add_storage_arguments, storage_config


def add_parser(commands) -> None:
    browse = commands.add_parser("browse", help="a local web page over an output: overview, thumbnails, samples")
    browse.add_argument("output", help="the job's output URL")
    browse.add_argument("--port", type=int, default=8000, help="port to serve on (default: 8000)")
    browse.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default: 127.0.0.1; the page has no authentication)")
    browse.add_argument("--export", metavar="DIR", help="write static HTML and thumbnails to DIR instead of serving")
    browse.add_argument("--limit", type=int, default=100, help="with --export: how many samples (default: 100)")
    add_storage_arguments(browse)
    browse.add_argument("--timeout", type=float, default=120.0,
                        help="seconds to keep retrying unreachable storage before giving up (default: 120)")
    browse.set_defaults(func=_browse)


def _browse(args) -> int:
    from jobs.browse.command import browse_command  # pyarrow and the report: `latentmill run` speaks before they load

    return browse_command(args, storage_config(args, timeout_s=args.timeout))
