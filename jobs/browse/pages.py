"""HTML of the browser's pages, from templates/base.html and plain escaped markup.

Every page lives at the top level (index.html, grid.html, sample-KEY.html) and links relatively, so
the same pages work served (`latentmill browse`) and as static files (`--export`).
"""

from __future__ import annotations

import json
from html import escape
from importlib import resources
from string import Template
from urllib.parse import quote, urlencode

from jobs.browse.catalog import STATUSES, Filters
from jobs.kinds.base import Comparison
from pipelines.sinks.tar_offsets import file_spans

PAGE_SIZE = 100
NO_FILTERS = Filters()


class Links:
    """Where a page links to: the server's URLs, or the static export's file names."""

    def __init__(self, static: bool = False):
        self.static = static

    overview = "index.html"
    report_png = "report.png"

    def grid(self, page: int = 1, filters: Filters = NO_FILTERS, per: int = PAGE_SIZE) -> str:
        if self.static:
            return f"grid-{page}.html"
        return "grid.html?" + urlencode({**filters.query(), "page": page, **({"per": per} if per != PAGE_SIZE else {})})

    def sample(self, key: str) -> str:
        return f"sample-{quote(key, safe='')}.html"

    def thumb(self, key: str) -> str:
        return f"thumbs/{quote(key, safe='')}.jpg"

    def file(self, key: str, ext: str) -> str:
        return f"files/{quote(key, safe='')}.{ext}"

    def compare(self, key: str) -> str:
        return f"compare/{quote(key, safe='')}.png"


def render(title: str, body: str, output: str, links: Links) -> str:
    template = Template(resources.files("jobs.browse").joinpath("templates/base.html").read_text())
    return template.substitute(title=escape(title), body=body, output=escape(output),
                               overview_url=links.overview, grid_url=links.grid())


def table(rows: list[tuple], header: tuple | None = None, css: str = "") -> str:
    head = "<tr>" + "".join(f"<th>{escape(str(h))}</th>" for h in header) + "</tr>" if header else ""
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f'<table class="{css}">{head}{body}</table>'


def text(value) -> str:
    return escape("-" if value is None else str(value))


def figure(value, digits: int = 3) -> str:
    return text(f"{value:.{digits}f}" if isinstance(value, float) else value)


# -- overview ------------------------------------------------------------------------------------

def overview_page(job: dict, report: dict, counts: dict, damaged: dict, has_chart: bool, links: Links) -> str:
    spec = job.get("spec") or {}
    sampler = spec.get("sampler") or spec.get("video") or spec.get("image")
    about = [("name", text(job.get("name"))), ("kind", text(spec.get("kind"))),
             ("model", text((spec.get("model") or {}).get("reference"))), ("decoder", text(spec.get("decoder"))),
             ("sampler", text(json.dumps(sampler, sort_keys=True) if sampler else None))]
    quality = report.get("quality") or {}
    flagged = quality.get("flagged") or []
    count_rows = [("planned", text(job.get("planned")), "")]
    for status in STATUSES:
        link = f'<a href="{escape(links.grid(1, Filters(status=status)))}">show</a>' if not links.static else ""
        count_rows.append((status if status != "ok" else "committed", str(counts.get(status, 0)), link))
    flag_link = f'<a href="{escape(links.grid(1, Filters(flagged=True)))}">show</a>' if not links.static else ""
    count_rows.append(("flagged shards", str(len(flagged)), flag_link))
    totals = report.get("totals") or {}
    bottleneck = report.get("bottleneck") or {}
    throughput = [("status", text(report.get("status"))), ("runs", text(totals.get("runs"))),
                  ("wall time (s)", figure(totals.get("wall_s"), 1)), ("samples/s", figure(totals.get("images_per_s"))),
                  ("GPU-hours", figure(totals.get("gpu_hours"), 5)), ("CPU-hours", figure(totals.get("cpu_hours"), 5)),
                  ("bottleneck", text(bottleneck.get("stage")) + " " + text(bottleneck.get("why", "")))]
    parts = ["<h2>Job</h2>", table(about), "<h2>Samples</h2>", table(count_rows, css="counts"),
             "<h2>Throughput</h2>", table(throughput)]
    if quality:
        parts += ["<h2>Quality monitor</h2>",
                  table([("monitored", text(quality.get("monitored"))), ("mean PSNR (dB)", figure(quality.get("psnr"), 2)),
                         ("mean SSIM", figure(quality.get("ssim"), 4))]),
                  "".join(f'<p class="problems">shard {text(f["shard"])} flagged: {text(f["why"])}</p>' for f in flagged)]
    if damaged:
        parts.append("<h2>Damaged shards</h2>" + "".join(
            f'<p class="problems">shard {text(name)}: {text(why)}</p>' for name, why in sorted(damaged.items())))
    if has_chart:
        parts.append(f'<h2>Report chart</h2><img class="report-png" src="{links.report_png}" alt="report chart">')
    return render(f"{job.get('name', 'output')}: overview", "\n".join(parts), report.get("output", ""), links)


# -- grid ----------------------------------------------------------------------------------------

def grid_page(rows: list[dict], total: int, page: int, per: int, filters: Filters, shards: list[str], output: str,
              links: Links) -> str:
    pages = max(1, -(-total // per))
    cells = "\n".join(cell(row, links) for row in rows)
    pager = [f'<span>page {page} of {pages} ({total} samples)</span>']
    if page > 1:
        pager.insert(0, f'<a rel="prev" href="{escape(links.grid(page - 1, filters, per))}">previous</a>')
    if page < pages:
        pager.append(f'<a rel="next" href="{escape(links.grid(page + 1, filters, per))}">next</a>')
    pager_html = f'<div class="pager">{"".join(pager)}</div>'
    form = "" if links.static else filter_form(filters, shards, per)
    body = f'{form}{pager_html}<div class="grid" id="grid">{cells}</div>{pager_html}'
    return render("samples", body, output, links)


def cell(row: dict, links: Links) -> str:
    key, status = row["key"], row.get("status") or "ok"
    hover = escape(f"{key}\n{row.get('prompt') or ''}\nseed {row.get('seed')}")
    label = f'<div class="label">{text(key)} · seed {text(row.get("seed"))}</div>'
    if status == "ok":
        picture = f'<img loading="lazy" src="{links.thumb(key)}" alt="{escape(key)}">'
    else:
        picture = f'<div class="error">{text(status)}: {text(row.get("error"))}</div>'
    return (f'<a class="cell {escape(status)}" data-key="{escape(key)}" href="{links.sample(key)}" '
            f'title="{hover}">{picture}{label}</a>')


def filter_form(filters: Filters, shards: list[str], per: int) -> str:
    options = "".join(f'<option value="{s}"{" selected" if filters.status == s else ""}>{s}</option>'
                      for s in ("", *STATUSES))
    shard_options = "".join(f'<option value="{escape(s)}"{" selected" if filters.shard == s else ""}>{escape(s)}</option>'
                            for s in ("", *shards))
    psnr = "" if filters.psnr_below is None else f"{filters.psnr_below:g}"
    return (f'<form class="filters" method="get" action="grid.html">'
            f'<label>status <select name="status">{options}</select></label>'
            f'<label><input type="checkbox" name="flagged" value="1"{" checked" if filters.flagged else ""}> '
            f'quality-flagged shards</label>'
            f'<label>monitor PSNR below <input name="psnr_below" size="5" value="{psnr}"></label>'
            f'<label>prompt <input name="q" value="{escape(filters.text or "")}"></label>'
            f'<label>shard <select name="shard">{shard_options}</select></label>'
            f'<input type="hidden" name="per" value="{per}"><button type="submit">filter</button></form>')


# -- sample --------------------------------------------------------------------------------------

def sample_page(row: dict, meta: dict | None, latents: dict | None, neighbours: list[dict],
                comparison: Comparison | None, output: str, links: Links) -> str:
    key = row["key"]
    spans = file_spans(row)
    parts = [table([("prompt", f'<span id="prompt">{text(row.get("prompt"))}</span>'),
                    ("seed", f'<span id="seed">{text(row.get("seed"))}</span>'),
                    ("status", text(row.get("status"))), ("shard", text(row.get("shard")))])]
    if row.get("status") not in (None, "ok"):
        parts.append(f'<p class="problems" id="error">{text(row.get("error"))}</p>')
    parts.append(f'<div class="media">{media(row, spans, comparison, links)}</div>')
    if latents:
        parts += ["<h2>Latents</h2>", table([(name, figure(value, 4) if isinstance(value, float) else text(value))
                                              for name, value in latents.items()])]
    if meta is not None:
        parts += [f"<h2>{escape(key)}.json</h2>", f'<pre id="meta">{escape(json.dumps(meta, indent=2, sort_keys=True))}</pre>']
    shown = {k: v for k, v in row.items() if k != "tar_path"}
    parts += ["<h2>Manifest row</h2>", table([(escape(k), text(v)) for k, v in shown.items()])]
    if neighbours:
        thumbs = "".join(f'<a href="{links.sample(n["key"])}" title="{escape(n["key"])} seed {text(n.get("seed"))}">'
                         f'<img src="{links.thumb(n["key"])}" alt="{escape(n["key"])}"></a>' for n in neighbours)
        parts += ["<h2>Same prompt, other seeds</h2>", f'<div class="neighbours">{thumbs}</div>']
    return render(f"sample {key}", "\n".join(parts), output, links)


def media(row: dict, spans: dict, comparison: Comparison | None, links: Links) -> str:
    key = row["key"]
    if "mp4" in spans:
        poster = f' poster="{links.file(key, "poster.png")}"' if "poster.png" in spans else ""
        return (f'<figure><video id="video" controls autoplay muted loop playsinline{poster} '
                f'src="{links.file(key, "mp4")}"></video><figcaption>{escape(key)}.mp4</figcaption></figure>')
    ext = next((e for e in ("png", "jpg", "jpeg", "webp") if e in spans), None)
    if ext is None:
        return ""
    if comparison is None:
        return picture("image", links.file(key, ext), f"{key}.{ext}")
    pair = [("image", links.file(key, ext)), ("compare", links.compare(key))]
    if comparison.other_first:
        pair.reverse()
    return "".join(picture(element_id, src, caption) for (element_id, src), caption in zip(pair, comparison.captions))


def picture(element_id: str, src: str, caption: str) -> str:
    return (f'<figure><img id="{element_id}" src="{src}" alt="{escape(caption)}">'
            f'<figcaption>{escape(caption)}</figcaption></figure>')


def loading_page(done: int, total: int, output: str, links: Links) -> str:
    # No script: the page asks again by itself every 2 s until the manifests are in.
    body = (f'<meta http-equiv="refresh" content="2"><p>Reading the shards\' manifests: {done:,} of {total:,}. '
            f'This page reloads itself; <a href="{links.grid()}">the samples</a> can be browsed meanwhile '
            f'(filters and counts need every manifest).</p>')
    return render("loading", body, output, links)


def not_found_page(what: str, output: str, links: Links) -> str:
    return render("not found", f'<p class="problems">{escape(what)}</p>', output, links)
