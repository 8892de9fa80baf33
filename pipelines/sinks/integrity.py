"""Does a committed shard still hold what its marker recorded?

Size is checked always (one listing of shards/ gives every size, so it costs nothing per shard);
with `full`, each file is read and its sha256 compared too, which catches changed bytes of the
same length. A run regenerates the shards that fail; `latentmill verify` reports them.
"""

from __future__ import annotations

import hashlib

from pipelines.sinks.layout import OutputLayout, committed_files

CHUNK = 8 << 20


def file_sha256(layout: OutputLayout, path: str) -> str:
    def digest():
        h = hashlib.sha256()
        with layout.fs.open(path, "rb") as f:
            while chunk := f.read(CHUNK):
                h.update(chunk)
        return h.hexdigest()

    return layout.retrying(f"hashing {path}", digest)


def shard_problem(layout: OutputLayout, name: str, marker: dict, sizes: dict[str, int], full: bool) -> str | None:
    """Why shard `name` does not match its marker, or None. `sizes`: filename -> size in shards/."""
    for kind, filename in committed_files(name, marker).items():
        size = sizes.get(filename)
        if size is None:
            return f"its {kind} {filename} is missing"
        expected = marker.get(f"{kind}_bytes")
        if expected is not None and size != expected:
            return f"its {kind} {filename} has {size} bytes, its marker says {expected}"
        recorded = marker.get(f"{kind}_sha256")
        if full and recorded and file_sha256(layout, layout.path("shards", filename)) != recorded:
            return f"its {kind} {filename} does not have the sha256 its marker records"
    return None


def damaged_shards(layout: OutputLayout, markers: dict[str, dict], full: bool = False) -> dict[str, str]:
    """name -> why, for every committed shard whose files do not match its marker."""
    sizes = layout.shard_sizes()
    found = {name: shard_problem(layout, name, marker, sizes, full) for name, marker in sorted(markers.items())}
    return {name: why for name, why in found.items() if why}
