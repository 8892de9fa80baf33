"""The browser's HTTP server: the standard library's ThreadingHTTPServer in front of a Site.

Why the standard library and not a web framework: the page is read-only, local, a handful of GET
routes; a thread per request is what thumbnail fetches need (the browser asks for a page's 100 in
parallel, each a range read that waits on storage). A framework would add an ASGI server and a
dependency to the container image for nothing the page uses. Byte ranges are answered (206), which
is what a <video> element asks for.
"""

from __future__ import annotations

import re
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit

from jobs.browse.pages import Links
from jobs.browse.site import Site

RANGE = re.compile(r"bytes=(\d*)-(\d*)$")


def make_server(site: Site, host: str, port: int) -> ThreadingHTTPServer:
    """Bound and listening (OSError when the port is taken); call serve_forever() to serve."""
    handler = type("BoundHandler", (Handler,), {"site": site, "links": Links(static=False)})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server


class Handler(BaseHTTPRequestHandler):
    site: Site
    links: Links
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 (the standard library's name)
        self._answer(send_body=True)

    def do_HEAD(self) -> None:  # noqa: N802
        self._answer(send_body=False)

    def _answer(self, send_body: bool) -> None:
        url = urlsplit(self.path)
        response = self.site.respond(url.path, dict(parse_qsl(url.query)), self.links)
        body, status = response.body, response.status
        headers = {"Content-Type": response.content_type, "Accept-Ranges": "bytes", "Cache-Control": "no-cache"}
        wanted = RANGE.match(self.headers.get("Range", "")) if status == 200 else None
        if wanted:
            start, end = byte_range(wanted, len(body))
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{len(body)}"
            body, status = body[start:end], 206
        self.send_response(status)
        for name, value in {**headers, "Content-Length": str(len(body))}.items():
            self.send_header(name, value)
        self.end_headers()
        if send_body:
            self.wfile.write(body)

    def log_message(self, format, *args) -> None:  # noqa: A002 (the standard library's signature)
        pass  # one line per thumbnail would bury the URL the command printed


def byte_range(match: re.Match, length: int) -> tuple[int, int]:
    """[start, end) of a `bytes=a-b` header (b inclusive; `-n` is the last n bytes)."""
    first, last = match.group(1), match.group(2)
    if not first:
        return max(0, length - int(last or 0)), length
    return min(int(first), length), min(int(last) + 1 if last else length, length)
