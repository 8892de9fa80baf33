"""What the image and video evaluations share: table cells, the side-by-side grid and the files written."""

from __future__ import annotations

import io
import json
import math
import posixpath
import textwrap

import torch
from PIL import Image, ImageDraw

from pipelines.sinks.storage import json_safe, open_output

GRID_SAMPLES = 6


def format_cell(value, digits=2) -> str:
    """A table cell: floats to `digits`, infinite PSNR as inf, a missing value (None) as -."""
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    return "-" if value is None else (f"{value:.{digits}f}" if isinstance(value, float) else str(value))


def wrapped(text: str) -> list[str]:
    """A note as lines of at most 100 columns (a path is never cut)."""
    return textwrap.wrap(text, 100, subsequent_indent="  ", break_long_words=False, break_on_hyphens=False)


def plain_table(head: list[str], rows: list[list[str]]) -> list[str]:
    """Columns one space apart, the first left-aligned: for terminals, where Markdown tables wrap."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]

    def line(values) -> str:
        return " ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(values, widths))).rstrip()

    return [line(head), line(["-" * w for w in widths]), *(line(r) for r in rows)]


def render_grid(columns: list[tuple[str, torch.Tensor]], count: int = GRID_SAMPLES) -> bytes:
    """Rows of samples; a column per (name, images (B, 3, H, W) in [0, 1]), names on top."""
    n = min(count, len(columns[0][1]))
    h, w = columns[0][1].shape[-2:]
    # Each column as wide as its whole label needs (a name is never cut), at least the image.
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    cell_w = max(w, 96, *(int(probe.textlength(name)) + 6 for name, _ in columns))
    label_h = 14
    grid = Image.new("RGB", (cell_w * len(columns), label_h + h * n), "white")
    draw = ImageDraw.Draw(grid)
    for c, (name, batch) in enumerate(columns):
        draw.text((c * cell_w + 2, 1), name, fill="black")
        pixels = (batch[:n].clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy()
        for r in range(n):
            grid.paste(Image.fromarray(pixels[r]), (c * cell_w, label_h + r * h))
    buffer = io.BytesIO()
    grid.save(buffer, format="PNG")
    return buffer.getvalue()


def write_files(out_url: str, result: dict, markdown: str, grid: bytes) -> None:
    fs, root = open_output(out_url)
    files = {"eval.json": json.dumps(json_safe(result), indent=2).encode(), "eval.md": markdown.encode(), "grid.png": grid}
    for name, data in files.items():
        with fs.open(posixpath.join(root, name), "wb") as f:
            f.write(data)
