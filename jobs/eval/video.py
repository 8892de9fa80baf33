"""`latentmill eval` on a video output: the clips' stored latents decoded by the model's own video
VAE (the reference) and by each light video decoder, compared frame by frame and over time.

    latentmill eval VIDEO_OUTPUT --decoder random:tae-temporal [--chunk-frames 4] --out ./eval-video

The output must have kept its latents (`output.save_latents: true`). Per decoder: per-frame PSNR
and SSIM (and LPIPS where its weights are present) against the reference, temporal flicker (light
minus reference), decode time per frame measured in this run, parameters; a Fréchet distance when
a feature network is given with --video-features (FVD proper needs an I3D network trained on
Kinetics: no such weights ship with latentmill, and none are downloaded).
"""

from __future__ import annotations

import importlib
import io
import statistics
import time

import numpy as np
import torch

import decoders
from decoders.metrics import LPIPS, LPIPSWeightsMissing, lpips_status
from decoders.video_metrics import compare_videos
from jobs.eval.common import format_cell, plain_table, render_grid, wrapped, write_files
from pipelines.config import MODEL_VIDEO_VAE
from pipelines.errors import ConfigError
from pipelines.readers import webdataset
from pipelines.stages.video import load_video_decoder

FRECHET_MISSING = ("not computed: FVD needs a video feature network (I3D trained on Kinetics), whose weights "
                   "latentmill does not ship or download; pass --video-features MODULE:CALLABLE, a function "
                   "from clips (B, F, 3, H, W) in [0, 1] to features (B, D)")


def is_video_output(job: dict | None) -> bool:
    return bool(job) and job.get("spec", {}).get("kind") == "generate-video"


def load_clip_latents(url: str, limit: int) -> tuple[list[str], torch.Tensor]:
    """(keys, latents (B, F, C, h, w)) of the first `limit` clips, in shard order."""
    keys, latents = [], []
    for sample in webdataset(url):
        if "latent.npy" not in sample:
            raise ConfigError("input", "", detail=f"{url}: clip {sample['__key__']} has no latents; evaluating "
                              "decoders needs a video output generated with output.save_latents: true")
        keys.append(sample["__key__"])
        latents.append(np.load(io.BytesIO(sample["latent.npy"]), allow_pickle=False))
        if len(keys) == limit:
            break
    if not keys:
        raise ConfigError("input", "", detail=f"{url}: no committed clips to evaluate")
    return keys, torch.from_numpy(np.stack(latents)).float()


def load_feature_network(path: str | None):
    """MODULE:CALLABLE -> the callable (the user's own code, imported like any plugin), or None."""
    if not path:
        return None
    module, _, name = path.partition(":")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ConfigError("--video-features", "MODULE:CALLABLE", path, detail=f"cannot import it: {exc}") from None


def timed_decode(decode, parts, device: torch.device, units=len) -> tuple[torch.Tensor, float]:
    """`decode` applied to each part, concatenated, and the median seconds per unit (`units(part)`:
    images, or frames of a clip) over the parts, after one warm-up part; synchronised on a GPU."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    decode(parts[0])
    sync()
    outputs, per_unit = [], []
    for part in parts:
        start = time.perf_counter()
        out = decode(part)
        sync()
        per_unit.append((time.perf_counter() - start) / units(part))
        outputs.append(out.cpu())
    return torch.cat(outputs), statistics.median(per_unit)


def decode_timed(decoder, latents: torch.Tensor, chunk_frames: int | None) -> tuple[torch.Tensor, float]:
    """Decoded clips and the median seconds per frame, one clip at a time."""
    return timed_decode(lambda clip: decoder.decode(clip, chunk_frames=chunk_frames),
                        latents.to(decoder.device).split(1), decoder.device, units=lambda clip: clip.shape[1])


def evaluate_video(decoders_: list, reference, keys, latents, lpips, features, features_name,
                   chunk_frames: int | None) -> dict:
    perceptual = {}
    if lpips is not None:  # values from unverified trunk weights never carry the name LPIPS
        perceptual["lpips" if lpips.verified else "lpips_test_only"] = lambda a, b: lpips(b, a)
    hooks = {"perceptual": perceptual, "features": {f"frechet[{features_name}]": features} if features else None}
    ref_clips, ref_time = decode_timed(reference, latents, None)
    rows, firsts = [], {}
    for decoder in [reference, *decoders_]:
        is_ref = decoder is reference
        chunk = None if is_ref or not decoder.supports_chunking else chunk_frames
        clips, seconds = (ref_clips, ref_time) if is_ref else decode_timed(decoder, latents, chunk)
        firsts[decoder.name] = clips[:, 0]
        rows.append({"decoder": decoder.name, "is_reference": is_ref, "chunk_frames": chunk,
                     "parameters": decoder.num_parameters(), "seconds_per_frame": seconds,
                     **compare_videos(clips, ref_clips, **hooks)})
    return {"kind": "video", "clips": len(keys), "frames_per_clip": int(latents.shape[1]),
            "frame_size": list(ref_clips.shape[-2:]), "device": str(reference.device), "rows": rows,
            "lpips": lpips_status(lpips), "frechet": f"features from {features_name}" if features else FRECHET_MISSING,
            "keys": keys, "_first_frames": firsts}


def render_markdown(result: dict) -> str:
    metrics = [c for c in result["rows"][0] if c == "ssim" or c.startswith(("psnr", "lpips", "flicker_excess", "frechet"))]
    head = ["decoder", *metrics, "ms / frame", "params (M)", "chunk"]
    h, w = result["frame_size"]
    lines = [f"# Video decoder evaluation: {result['clips']} clips of {result['frames_per_clip']} frames at {h}x{w} "
             f"on {result['device']}, against the reference decoder", "",
             f"LPIPS: {result['lpips']}", "", f"Fréchet distance: {result['frechet']}", "",
             "| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for row in result["rows"]:
        name = row["decoder"] + (" (reference)" if row["is_reference"] else "")
        cells = [name, *[format_cell(row.get(c), 2 if c.startswith(("psnr", "frechet")) else 4) for c in metrics],
                 format_cell(row["seconds_per_frame"] * 1000), format_cell(row["parameters"] / 1e6, 3), format_cell(row["chunk_frames"])]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "flicker_excess: mean absolute change between consecutive frames, this decoder's minus the "
              "reference's (> 0: it flickers more).", "", "![first frames](grid.png)", ""]
    return "\n".join(lines)


def run(args, device: str) -> int:
    """The video branch of `latentmill eval` (jobs/eval/images.py parses the arguments)."""
    if args.linear_fit or args.baseline:
        # Video eval compares against the reference decode (the clips have no originals to score against).
        raise ConfigError("--linear-fit" if args.linear_fit else "--baseline", "", detail="baselines are computed "
                          "from training images; this is a video output (compared against its reference decode)")
    keys, latents = load_clip_latents(args.input, args.samples)
    features = load_feature_network(args.video_features)
    if features is not None and len(keys) < 2:
        raise ConfigError("--samples", ">= 2 clips", len(keys), detail="a Fréchet distance needs at least 2 clips")
    reference = load_video_decoder(MODEL_VIDEO_VAE, args.model, device, "float32")
    reference.name = f"{args.model} video VAE"
    chosen = []
    for name in args.decoder:
        try:
            decoder = decoders.load(name, device=device)
        except (ValueError, FileNotFoundError) as exc:
            raise ConfigError("--decoder", "", detail=str(exc)) from None
        if not decoder.is_video or decoder.latent_channels != latents.shape[2]:
            what = "decodes images" if not decoder.is_video else f"decodes {decoder.latent_channels}-channel latents"
            raise ConfigError("--decoder", "", detail=f"{decoder.name} {what}; these clips need a video decoder "
                              f"of {latents.shape[2]}-channel latents")
        chosen.append(decoder)
    try:
        lpips = LPIPS().to(device)
    except LPIPSWeightsMissing:  # said once, on the table's LPIPS line (lpips_status)
        lpips = None
    result = evaluate_video(chosen, reference, keys, latents, lpips, features, args.video_features, args.chunk_frames)
    firsts = result.pop("_first_frames")
    write_files(args.out, result, render_markdown(result), render_grid(list(firsts.items())))
    print(render_terminal(result, args.out))
    return 0


def _short(metric: str) -> str:
    return "Fréchet" if metric.startswith("frechet") else metric.replace("_db", " dB").replace("_", " ")


def render_terminal(result: dict, out_url: str) -> str:
    """The terminal's table (fits 100 columns); eval.md has every column, eval.json every number."""
    metrics = [c for c in result["rows"][0] if c == "ssim" or c.startswith(("psnr", "lpips", "flicker_excess", "frechet"))]
    rows = [[row["decoder"] + (" (ref)" if row["is_reference"] else ""),
             *[format_cell(row.get(c), 2 if c.startswith(("psnr", "frechet")) else 4) for c in metrics],
             format_cell(row["seconds_per_frame"] * 1000), format_cell(row["chunk_frames"])] for row in result["rows"]]
    h, w = result["frame_size"]
    return "\n".join([
        f"video decoder evaluation: {result['clips']} clips of {result['frames_per_clip']} frames at {h}x{w} "
        f"on {result['device']}",
        *plain_table(["decoder", *map(_short, metrics), "ms/frame", "chunk"], rows),
        *wrapped(f"LPIPS: {result['lpips']}"),
        *wrapped(f"Fréchet distance: {result['frechet']}"),
        *wrapped(f"every column: {out_url.rstrip('/')}/eval.md (and eval.json, grid.png)"),
    ])
