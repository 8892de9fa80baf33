"""Clips as mp4: H.264 through PyAV (libx264, yuv420p), and the check `verify` runs on every clip.

One encoder thread, fixed options, no macroblock tree and no creation time, so the same frames
always give the same bytes: a resumed job writes the clips an uninterrupted one does.
"""

from __future__ import annotations

import io
import tarfile
from fractions import Fraction

import numpy as np

CODEC = "h264"
PIXEL_FORMAT = "yuv420p"


def encode_mp4(frames: np.ndarray, fps: int, crf: int = 18, preset: str = "medium") -> bytes:
    """uint8 frames (F, H, W, 3), H and W even (yuv420p halves chroma) -> mp4 bytes."""
    # lazy: keeps av out of processes that never call this
    import av

    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"expected uint8 frames (F, H, W, 3), got {frames.dtype} {frames.shape}")
    height, width = frames.shape[1:3]
    if height % 2 or width % 2:
        raise ValueError(f"{PIXEL_FORMAT} needs even frame sizes, got {width}x{height}")
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = width, height, PIXEL_FORMAT
        stream.thread_count = 1  # x264's output depends on its thread count
        # x264's macroblock tree (mbtree) gave different bytes for the same frames once torch had run
        # in the process (measured: 3 outputs in 4 encodes); without it the bytes are repeatable.
        stream.options = {"crf": str(crf), "preset": preset, "x264-params": "mbtree=0"}
        for pixels in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(pixels), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():  # flush the encoder's delayed frames
            container.mux(packet)
    return buffer.getvalue()


def probe_mp4(data: bytes, decode: bool = True) -> dict:
    """What an mp4 holds: frames (counted by decoding them all unless `decode=False`), size, fps,
    codec, pixel format, duration. Raises ValueError for bytes that are not a readable video."""
    # lazy: keeps av out of processes that never call this
    import av

    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            if not container.streams.video:
                raise ValueError("no video stream")
            stream = container.streams.video[0]
            if decode:
                frames = sum(1 for _ in container.decode(stream))
            else:
                frames = stream.frames
            rate = stream.average_rate
            return {
                "frames": frames,
                "width": stream.codec_context.width,
                "height": stream.codec_context.height,
                "fps": float(rate) if rate else None,
                "codec": stream.codec_context.name,
                "pix_fmt": stream.codec_context.pix_fmt,
                "duration": float(stream.duration * stream.time_base) if stream.duration is not None else None,
            }
    except av.error.FFmpegError as exc:
        raise ValueError(f"not a readable mp4 ({type(exc).__name__}: {exc})") from None


def read_frames(data: bytes) -> np.ndarray:
    """All frames of an mp4 as uint8 (F, H, W, 3)."""
    # lazy: keeps av out of processes that never call this
    import av

    with av.open(io.BytesIO(data), mode="r") as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def check_mp4(data: bytes, row: dict) -> list[str]:
    """Problems of one clip against its manifest row (frames, width, height, fps); [] when it agrees."""
    try:
        found = probe_mp4(data)
    except ValueError as exc:
        return [str(exc)]
    problems = [
        f"{name} is {found[name]}, the manifest says {row[name]}"
        for name in ("frames", "width", "height")
        if row.get(name) is not None and found[name] != row[name]
    ]
    if row.get("fps") is not None and (found["fps"] is None or abs(found["fps"] - row["fps"]) > 1e-6):
        problems.append(f"fps is {found['fps']}, the manifest says {row['fps']}")
    return problems


def check_clips(tar_bytes: bytes, rows: list[dict]) -> list[str]:
    """`check_mp4` for every clip of a shard (tar bytes) against its manifest row; [] for image shards."""
    clips = {r["key"]: r for r in rows if r.get("status", "ok") == "ok" and r.get("format") == "mp4"}
    if not clips:
        return []
    problems = []
    with tarfile.open(fileobj=io.BytesIO(tar_bytes), mode="r:") as tar:
        for member in tar.getmembers():
            key, _, ext = member.name.partition(".")
            if ext == "mp4" and key in clips:
                problems += [f"clip {key}: {p}" for p in check_mp4(tar.extractfile(member).read(), clips[key])]
    return problems
