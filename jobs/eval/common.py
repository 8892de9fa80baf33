"""What the image and video evaluations share: table cells, the side-by-side grid and the files written."""

from __future__ import annotations

import io
import json
import math
import posixpath

import torch
from PIL import Image, ImageDraw

from pipelines.sinks.storage import json_safe, open_output

GRID_SAMPLES = 6


def format_cell(value, digits=2) -> str:
    """A table cell: floats to `digits`, infinite PSNR as inf, a missing value (None) as -."""
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    return "-" if value is None else (f"{value:.{digits}f}" if isinstance(value, float) else str(value))


def render_grid(columns: list[tuple[str, torch.Tensor]], count: int = GRID_SAMPLES) -> bytes:
    """Rows of samples; a column per (name, images (B, 3, H, W) in [0, 1]), names on top."""
    n = min(count, len(columns[0][1]))
    h, w = columns[0][1].shape[-2:]
    cell_w = max(w, 96)
    label_h = 14
    grid = Image.new("RGB", (cell_w * len(columns), label_h + h * n), "white")
    draw = ImageDraw.Draw(grid)
    for c, (name, batch) in enumerate(columns):
        draw.text((c * cell_w + 2, 1), name[:16], fill="black")
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
