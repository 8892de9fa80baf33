"""`latentmill browse OUTPUT --export DIR`: the same pages as static files for any static host.

The overview, the grid pages and the sample pages of the first N samples, their thumbnails and
files; links are relative, so the folder works from disk or behind any web server.
"""

from __future__ import annotations

import os

from jobs.browse.pages import PAGE_SIZE, Links
from jobs.browse.site import Site
from pipelines.sinks.tar_offsets import file_spans


def export(site: Site, folder: str, limit: int) -> int:
    """Write the pages of the first `limit` samples to `folder`; returns how many files were written."""
    links = Links(static=True)
    site.catalog.keep_first(limit)  # grid pages, counts of pages and neighbours stay within the export
    rows = site.catalog.table.to_pylist()
    paths = ["index.html", "static/style.css"] + (["report.png"] if site.has_chart else [])
    paths += [f"grid-{n}.html" for n in range(1, max(1, -(-len(rows) // PAGE_SIZE)) + 1)]
    for row in rows:
        key = row["key"]
        paths.append(links.sample(key))
        full = site.catalog.row(key)
        if row.get("status") != "ok":
            continue
        paths.append(links.thumb(key))
        paths += [links.file(key, ext) for ext in media_files(full)]
        if site.comparison is not None:
            paths.append(links.compare(key))
    written = 0
    for path in paths:
        response = site.respond(path, {}, links)
        if response.status != 200 and not path.endswith(".html"):
            continue  # a file that cannot be read: its page says why
        target = os.path.join(folder, *path.split("/"))
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(target, "wb") as f:
            f.write(response.body)
        written += 1
    return written


def media_files(row: dict) -> list[str]:
    return [ext for ext in file_spans(row) if ext in ("png", "jpg", "jpeg", "webp", "mp4", "poster.png")]

