"""`latentmill browse OUTPUT`: serve the page (printing its URL, opening nothing) or export it."""

from __future__ import annotations

import errno
import sys

from pipelines.config import StorageConfig
from pipelines.observe.report import open_job_output

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def browse_command(args, storage: StorageConfig) -> int:
    # lazy: keeps numpy out of processes that never call this
    from jobs.browse.site import Site

    layout = open_job_output(args.output, storage)
    layout.check_reachable()
    site = Site(layout, storage)
    if args.export:
        # lazy: keeps numpy out of processes that never call this
        from jobs.browse.export import export

        site.catalog.wait()
        for name, why in sorted(site.catalog.damaged.items()):
            print(f"warning: shard {name} is damaged: {why}", file=sys.stderr)
        written = export(site, args.export, args.limit)
        print(f"wrote {written} files for the first {min(args.limit, site.catalog.table.num_rows)} samples to "
              f"{args.export} (open {args.export}/index.html)")
        return 0
    return serve(site, args.host, args.port)


def serve(site, host: str, port: int) -> int:
    # lazy: keeps numpy out of processes that never call this
    from jobs.browse.server import make_server

    try:
        server = make_server(site, host, port)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            print(f"error: --port {port}: {host}:{port} is already in use; choose another port with --port",
                  file=sys.stderr)
            return 2
        print(f"error: --host {host} --port {port}: cannot listen there: {exc.strerror or exc}", file=sys.stderr)
        return 2
    if host not in LOCAL_HOSTS:
        print(f"warning: listening on {host}: the page has no authentication; anyone who can reach this address "
              "can read the output", file=sys.stderr)
    shown = f"[{host}]" if ":" in host else host
    print(f"browsing {site.layout.url} at http://{shown}:{server.server_address[1]}/ (Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
