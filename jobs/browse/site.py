"""What the browser answers for a path: the pages, thumbnails, files and comparison images of one
output. The HTTP server and the static export both ask this; neither knows about outputs.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from importlib import resources
from urllib.parse import unquote

from jobs.browse import pages
from jobs.browse.catalog import Catalog, Filters
from jobs.browse.compare import LatentDecoder, comparison_of, source_image
from jobs.browse.media import MediaError, Thumbnails, content_type, latent_stats, read_file
from pipelines.config import StorageConfig
from pipelines.observe.report import build_job_report
from pipelines.sinks.layout import OutputLayout

HTML = "text/html; charset=utf-8"
MAX_PAGE = 1000  # thumbnails on one grid page
WAIT_S = 10.0  # how long a page that needs every manifest waits for them before saying it is loading


@dataclass
class Response:
    status: int
    content_type: str
    body: bytes


class Site:
    def __init__(self, layout: OutputLayout, storage: StorageConfig | None = None):
        self.layout, self.storage = layout, storage
        self.job = layout.read_job() or {}
        self.kind = (self.job.get("spec") or {}).get("kind", "generate")
        self._report: dict | None = None
        self._report_lock = threading.Lock()
        self.catalog = Catalog(layout, lambda: {f["shard"] for f in (self.report.get("quality") or {}).get("flagged", [])})
        self.thumbnails = Thumbnails(layout)
        self.comparison = comparison_of(self.job)
        self.decoder = LatentDecoder(self.job) if self.comparison and self.comparison.other == "latents" else None
        self.has_chart = layout.fs.exists(layout.path("report.png"))
        self.catalog.start_loading()

    @property
    def report(self) -> dict:
        """The job report (built once: with a quality monitor it reads every manifest)."""
        with self._report_lock:
            if self._report is None:
                self._report = build_job_report(self.layout)
            return self._report

    def respond(self, path: str, query: dict[str, str], links: pages.Links) -> Response:
        path = unquote(path.lstrip("/"))
        try:
            return self._route(path, query, links)
        except MediaError as exc:
            return Response(500, "text/plain; charset=utf-8", str(exc).encode())

    def _route(self, path: str, query: dict[str, str], links: pages.Links) -> Response:
        if path in ("", "index.html"):
            if not self.catalog.wait(WAIT_S):
                return self.loading(links)
            return self.html(pages.overview_page(self.job, self.report, self.catalog.counts(), self.catalog.damaged,
                                                 self.has_chart, links))
        if path == "grid.html" or (path.startswith("grid-") and path.endswith(".html")):
            number = query.get("page") or path[len("grid-"):-len(".html")] or "1"
            per = query.get("per", "")
            per = min(max(int(per), 1), MAX_PAGE) if per.isdigit() else pages.PAGE_SIZE
            return self.grid(int(number) if number.isdigit() else 1, per, filters_from(query), links)
        if path.startswith("sample-") and path.endswith(".html"):
            return self.sample(path[len("sample-"):-len(".html")], links)
        if path.startswith("static/"):
            return self.static(path[len("static/"):])
        if path == "report.png" and self.has_chart:
            return Response(200, "image/png", self.layout.fs.cat_file(self.layout.path("report.png")))
        folder, _, name = path.partition("/")
        key, _, ext = name.partition(".")
        row = self.catalog.row(key) if folder in ("thumbs", "files", "compare") else None
        if row is None:
            return self.not_found(f"nothing at /{path}: no such page or sample", links)
        if folder == "thumbs":
            return Response(200, "image/jpeg", self.thumbnails.get(row))
        if folder == "files":
            return Response(200, content_type(ext), read_file(self.layout, row, ext))
        return Response(200, "image/png", self.compare_image(row))

    def grid(self, number: int, per: int, filters: Filters, links: pages.Links) -> Response:
        if filters != Filters() and not self.catalog.wait(WAIT_S):
            return self.loading(links)
        rows, total = self.catalog.page(filters, number, per)
        return self.html(pages.grid_page(rows, total, number, per, filters, sorted(self.catalog.shards),
                                         self.layout.url, links))

    def sample(self, key: str, links: pages.Links) -> Response:
        row = self.catalog.row(key)
        if row is None:
            return self.not_found(f"no sample has the key {key!r} in {self.layout.url}", links)
        meta, latents = None, None
        if row.get("status") == "ok":
            meta = self._meta(row)
            latents = self._latents(row)
        comparison = self.comparison if row.get("status") == "ok" else None
        body = pages.sample_page(row, meta, latents, self.catalog.neighbours(row), comparison, self.layout.url, links)
        return self.html(body)

    def _meta(self, row: dict) -> dict | None:
        try:
            return json.loads(read_file(self.layout, row, "json"))
        except (MediaError, ValueError) as exc:
            return {"error": str(exc)}

    def _latents(self, row: dict) -> dict | None:
        try:
            return latent_stats(self.layout, row)
        except (MediaError, ValueError) as exc:
            return {"error": str(exc)}

    def compare_image(self, row: dict) -> bytes:
        if self.comparison is None:
            raise MediaError(f"{self.kind} samples have no comparison image")
        if self.comparison.other == "latents":
            return self.decoder.image_of(self.layout, row)
        return source_image(self.job, self.storage, row["key"])
    def static(self, name: str) -> Response:
        if name != "style.css":
            return Response(404, "text/plain", b"not found")
        return Response(200, "text/css", resources.files("jobs.browse").joinpath("static/style.css").read_bytes())

    def loading(self, links: pages.Links) -> Response:
        if self.catalog.load_error:
            return Response(500, "text/plain; charset=utf-8", f"the manifests could not be loaded: {self.catalog.load_error}".encode())
        done, total = self.catalog.progress
        return self.html(pages.loading_page(done, total, self.layout.url, links), 503)

    def html(self, text: str, status: int = 200) -> Response:
        return Response(status, HTML, text.encode())

    def not_found(self, what: str, links: pages.Links) -> Response:
        return self.html(pages.not_found_page(what, self.layout.url, links), 404)


def filters_from(query: dict[str, str]) -> Filters:
    psnr = query.get("psnr_below") or None
    try:
        psnr_below = float(psnr) if psnr else None
    except ValueError:
        psnr_below = None
    return Filters(status=query.get("status") or None, flagged=query.get("flagged") == "1", psnr_below=psnr_below,
                   text=query.get("q") or None, shard=query.get("shard") or None)
