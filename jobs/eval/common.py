"""What the image and video evaluations share: table cells, the side-by-side grid and the files written."""

from __future__ import annotations

import io
import json
import math
import posixpath
import re
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


LABEL_WIDTH = 160  # pixels a grid label may take before a path wraps


def render_grid(columns: list[tuple[str, torch.Tensor]], count: int = GRID_SAMPLES) -> bytes:
    """Rows of samples; a column per (name, images (B, 3, H, W) in [0, 1]), names on top."""
    n = min(count, len(columns[0][1]))
    h, w = columns[0][1].shape[-2:]
    # Each column as wide as its own label needs (a name is never cut; a path wraps at "/" or " "), so
    # one long name does not widen every column.
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    labels = [_label_lines(name, probe, max(w, LABEL_WIDTH)) for name, _ in columns]
    widths = [max(w, 96, *(int(probe.textlength(line)) + 6 for line in lines)) for lines in labels]
    label_h = 12 * max(len(lines) for lines in labels) + 2
    grid = Image.new("RGB", (sum(widths), label_h + h * n), "white")
    draw = ImageDraw.Draw(grid)
    x = 0
    for (_, batch), lines, cell_w in zip(columns, labels, widths):
        draw.multiline_text((x + 2, 1), "\n".join(lines), fill="black", spacing=1)
        pixels = (batch[:n].clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy()
        for r in range(n):
            grid.paste(Image.fromarray(pixels[r]), (x, label_h + r * h))
        x += cell_w
    buffer = io.BytesIO()
    grid.save(buffer, format="PNG")
    return buffer.getvalue()


def _label_lines(name: str, probe, width: int) -> list[str]:
    """`name` in lines of at most `width` pixels, broken after "/" or " " (a longer piece keeps its line)."""
    lines = [""]
    for piece in re.findall(r"[^/ ]+[/ ]?|[/ ]", name):
        if lines[-1] and probe.textlength(lines[-1] + piece) > width:
            lines.append(piece)
        else:
            lines[-1] += piece
    return lines


def write_files(out_url: str, result: dict, markdown: str, grid: bytes) -> None:
    fs, root = open_output(out_url)
    files = {"eval.json": json.dumps(json_safe(result), indent=2).encode(), "eval.md": markdown.encode(), "grid.png": grid}
    for name, data in files.items():
        with fs.open(posixpath.join(root, name), "wb") as f:
            f.write(data)
