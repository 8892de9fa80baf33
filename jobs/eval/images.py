"""`latentmill eval`: decode the same held-out latents with several decoders and compare them.

    latentmill eval ENCODE_OUTPUT --decoder random:lean --decoder ./train-lean/decoder \\
        [--train-data TRAIN_ENCODE_OUTPUT] [--baseline grey --baseline mean-colour --baseline linear \\
         --baseline untrained:lean] [--model tiny] [--held-out-fraction 0.1] --out ./eval

Per decoder: PSNR, SSIM and LPIPS against the original images and against the reference decoder
(the model's own VAE), decode time per image measured in this run (warm-up first, CUDA synchronised),
parameters and FLOPs at the evaluated size. Writes eval.json, eval.md and grid.png (original,
reference, each decoder, side by side) to --out. Every image is compared after uint8 rounding, as
stored in a dataset. Without LPIPS weights the LPIPS columns say so instead of holding numbers.
Baselines (jobs/eval/baselines.py) are rows like any decoder's.
A video output (kind generate-video, with its latents kept) is evaluated by jobs/eval/video.py.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

import decoders
from decoders.flops import count_flops, meta_twin
from decoders.metrics import LPIPS, LPIPSWeightsMissing, lpips_status, score
from jobs.eval import video as eval_video
from jobs.eval.baselines import TrainingSet, baseline_decoders, check_names, output_looks
from jobs.eval.common import format_cell, plain_table, render_grid, wrapped, write_files
from jobs.eval.video import is_video_output, timed_decode
from jobs.train.data import Shard, held_out_samples, scan
from pipelines.config import MODEL_VAE, StorageConfig
from pipelines.errors import ConfigError
from pipelines.models.decoding import load_decoder
from pipelines.models.loading import is_vae_dir
from pipelines.sinks.layout import OutputLayout


def load_eval_set(url: str, fraction: float | None, split_seed: int, limit: int, training: bool = False):
    """(keys, latents (N, C, h, w), images [0, 1] (N, 3, H, W)): the held-out split (`training`: the
    rest), or every sample when `fraction` is None."""
    storage = StorageConfig()
    shards = scan([url], storage, fraction if fraction is not None else 0.0, split_seed)
    if fraction is None:  # the whole output is the set
        shards = [Shard(s.tar_url, (), s.train_keys + s.held_out_keys) for s in shards]
    elif training:
        shards = [Shard(s.tar_url, (), s.train_keys) for s in shards]
    samples = list(held_out_samples(shards, storage, limit))
    if not samples:
        which = "training split" if training else "evaluation set"
        raise ConfigError("--held-out-fraction", "", detail=f"{url}: the {which} is empty")
    keys = [k for k, _, _ in samples]
    latents = torch.from_numpy(np.stack([z for _, z, _ in samples]))
    images = torch.from_numpy(np.stack([x for _, _, x in samples])).permute(0, 3, 1, 2).double() / 255.0
    return keys, latents, images


TRAINING_SAMPLES = 4096  # at most this many training samples for the baselines (the linear fit's)


def fold_linear_fit(args) -> None:
    """--linear-fit URL is --train-data URL --baseline linear; baseline names checked."""
    check_names(args.baseline)
    if not args.linear_fit:
        return
    if args.train_data and args.train_data != args.linear_fit:
        raise ConfigError("--linear-fit", "", detail=f"fits on {args.linear_fit} but --train-data is "
                          f"{args.train_data}; give one training set")
    args.train_data = args.linear_fit
    if "linear" not in args.baseline:
        args.baseline = [*args.baseline, "linear"]


def training_set(args, latents, images) -> TrainingSet | None:
    """What the baselines are computed from (jobs/eval/baselines.py): --train-data, the input's
    training split, or (with neither) the evaluated samples; None when no baseline needs one."""
    if not args.baseline:
        return None
    if args.train_data:
        _, z, x = load_eval_set(args.train_data, None, 0, TRAINING_SAMPLES)
        return TrainingSet(f"{args.train_data} ({len(z)} samples)", z, x)
    if args.held_out_fraction is not None:
        _, z, x = load_eval_set(args.input, args.held_out_fraction, args.split_seed, TRAINING_SAMPLES, training=True)
        return TrainingSet(f"the training split of {args.input} ({len(z)} samples)", z, x)
    return TrainingSet(f"the evaluated samples themselves ({len(latents)}; no --train-data or --held-out-fraction)",
                       latents, images, is_eval_set=True)


def decode_timed(decoder, latents: torch.Tensor, batch: int) -> tuple[torch.Tensor, float]:
    """Decoded images and the median seconds per image over batches."""
    images, seconds = timed_decode(decoder.decode, latents.split(batch), decoder.device)
    return images.double(), seconds


def count_flops_per_image(decoder, latents: torch.Tensor) -> int:
    with FlopCounterMode(display=False) as counter:
        decoder.decode(latents[:1])
    return int(counter.get_total_flops())


PARETO_SIZE = 1024  # the FLOPs column is at SDXL's size: what carries over from these small crops


def flops_at_pareto_size(decoder) -> int:
    return count_flops(meta_twin(decoder), PARETO_SIZE, PARETO_SIZE)


def evaluate(decoders_: list, reference, keys, latents, images, lpips, batch: int = 8) -> dict:
    ref_images, ref_time = decode_timed(reference, latents, batch)
    rows = []
    outputs = {}
    for decoder in [reference, *decoders_]:
        decoded, seconds = (ref_images, ref_time) if decoder is reference else decode_timed(decoder, latents, batch)
        outputs[decoder.name] = decoded
        row = {"decoder": decoder.name, "is_reference": decoder is reference, "parameters": decoder.num_parameters(),
               "flops_per_image": count_flops_per_image(decoder, latents),
               f"flops_at_{PARETO_SIZE}": flops_at_pareto_size(decoder), "seconds_per_image": seconds,
               **output_looks(decoded)}
        for against, target in (("original", images), ("reference", ref_images)):
            for metric, values in score(target, decoded, lpips).items():
                row[f"{metric}_vs_{against}"] = sum(values) / len(values)
        rows.append(row)
    size = list(images.shape[-2:])
    return {"samples": len(keys), "image_size": size, "device": str(reference.device), "rows": rows,
            "lpips": lpips_status(lpips), "keys": keys, "_outputs": outputs}


def reference_label(result: dict) -> str:
    """How the tables call the reference decoder: a teacher's decode, or the model's own VAE."""
    return "teacher" if result.get("reference", {}).get("teacher") else "reference"


def _lpips_key(result: dict) -> str | None:
    return next((k for k in ("lpips", "lpips_test_only") if f"{k}_vs_original" in result["rows"][0]), None)


def render_markdown(result: dict) -> str:
    """Every column: the Pareto table (cost, then quality vs the original and vs the reference)."""
    lpips_key, ref = _lpips_key(result), reference_label(result)
    quality = ["psnr_vs_original", "ssim_vs_original", *([f"{lpips_key}_vs_original"] if lpips_key else []),
               "psnr_vs_reference", "ssim_vs_reference"]
    size = result["image_size"]
    metric = {"psnr": "PSNR", "ssim": "SSIM", "lpips": "LPIPS", "lpips_test_only": "LPIPS (test only)"}
    head = ["decoder", "params (M)", f"GFLOP at {PARETO_SIZE} px", f"ms / image ({result['device']})",
            *[f"{metric[c.rsplit('_vs_', 1)[0]]} vs {c.rsplit('_vs_', 1)[1].replace('reference', ref)}" for c in quality],
            f"GFLOP / image ({size[0]}x{size[1]})", "output mean", "output spread"]
    lines = [f"# Decoder evaluation: {result['samples']} samples at {size[0]}x{size[1]} on {result['device']}", "",
             f"Reference ({ref}): {result.get('reference', {}).get('name', '-')}", "", f"LPIPS: {result['lpips']}", "",
             *([f"Baselines computed from: {result['baselines_from']}", ""] if result.get("baselines_from") else []),
             "| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for row in result["rows"]:
        name = row["decoder"] + (f" ({ref})" if row["is_reference"] else "")
        cells = [name, format_cell(row["parameters"] / 1e6, 3), format_cell(row[f"flops_at_{PARETO_SIZE}"] / 1e9, 1),
                 format_cell(row["seconds_per_image"] * 1000),
                 *[format_cell(row.get(c), 4 if "ssim" in c or "lpips" in c else 2) for c in quality],
                 format_cell(row["flops_per_image"] / 1e9, 3), format_cell(row["output_mean"], 3),
                 format_cell(row["output_spread"], 3)]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "![side by side](grid.png)", ""]
    return "\n".join(lines)


def terminal_columns(result: dict, full: bool) -> list[tuple[str, str, int, float]]:
    """(heading, row key, digits, scale) of the terminal's table; `full` adds LPIPS and the rest."""
    ref = "teach" if reference_label(result) == "teacher" else "ref"
    lpips_key = _lpips_key(result)
    columns = [("params M", "parameters", 3, 1e-6), (f"GFLOP@{PARETO_SIZE}", f"flops_at_{PARETO_SIZE}", 1, 1e-9),
               ("ms/img", "seconds_per_image", 2, 1e3), ("PSNR", "psnr_vs_original", 2, 1),
               ("SSIM", "ssim_vs_original", 4, 1), (f"PSNR {ref}", "psnr_vs_reference", 2, 1),
               (f"SSIM {ref}", "ssim_vs_reference", 4, 1)]
    if full:
        columns += [*([("LPIPS", f"{lpips_key}_vs_original", 4, 1)] if lpips_key else []),
                    ("GFLOP/img", "flops_per_image", 3, 1e-9), ("mean", "output_mean", 3, 1),
                    ("spread", "output_spread", 3, 1)]
    return columns


def render_terminal(result: dict, out_url: str, full: bool = False) -> str:
    """The terminal's table: narrow enough for 100 columns (`--full`: every column, wider);
    eval.md has every column, eval.json every number. PSNR/SSIM: against the original images."""
    columns = terminal_columns(result, full)
    head = ["decoder", *[h for h, _, _, _ in columns]]
    rows = []
    for row in result["rows"]:
        cells = [row["decoder"] + (" (ref)" if row["is_reference"] else "")]
        for _, key, digits, scale in columns:
            value = row.get(key)
            cells.append(format_cell(value * scale if isinstance(value, (int, float)) else value, digits))
        rows.append(cells)
    size = result["image_size"]
    ref = result.get("reference", {})
    return "\n".join([
        f"decoder evaluation: {result['samples']} samples at {size[0]}x{size[1]} on {result['device']}",
        *plain_table(head, rows),
        *wrapped(f"PSNR, SSIM: against the original images; {reference_label(result)} ({ref.get('name', '-')}): "
                 f"against its decode"),
        *wrapped(f"LPIPS: {result['lpips']}"),
        *(wrapped(f"baselines from: {result['baselines_from']}") if result.get("baselines_from") else []),
        *wrapped(f"every column: {out_url.rstrip('/')}/eval.md (and eval.json, grid.png)"),
    ])


def load_decoders(names: list[str], device) -> list:
    """The --decoder rows. Two checkpoints that call themselves alike (every trained lean decoder is
    `trained:lean`) are named by their paths instead: rows, JSON keys and grid columns stay apart."""
    chosen = []
    for name in names:
        try:
            chosen.append(decoders.load(name, device=device))
        except (ValueError, FileNotFoundError) as exc:
            raise ConfigError("--decoder", "", detail=str(exc)) from None
    labels = [d.name for d in chosen]
    for decoder, given in zip(chosen, names):
        if labels.count(decoder.name) > 1:
            decoder.name = given
    return chosen


@torch.no_grad()  # not torch.set_grad_enabled(False): a caller in the same process (tests) trains after
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="latentmill eval", description=__doc__.splitlines()[0])
    parser.add_argument("input", help="an encode output (latents + images), or a video output that kept its latents")
    parser.add_argument("--decoder", action="append", default=[], help="a decoder name or checkpoint (repeatable)")
    parser.add_argument("--model", help="the model whose VAE is the reference decoder: a pipeline, or a teacher's "
                        "AutoencoderKL directory (default: the model that encoded INPUT, from its job record)")
    parser.add_argument("--linear-fit", metavar="TRAIN_URL", help="also fit and evaluate the least-squares linear "
                        "decoder on this encode output (the same as --train-data TRAIN_URL --baseline linear)")
    parser.add_argument("--baseline", action="append", default=[], help="a baseline row (repeatable): grey, "
                        "mean-colour, linear, untrained:ARCH")
    parser.add_argument("--train-data", metavar="TRAIN_URL", help="the encode output the baselines are computed "
                        "from (default: the input's training split with --held-out-fraction)")
    parser.add_argument("--held-out-fraction", type=float, help="evaluate only this held-out split (as in training); "
                        "default: every sample of INPUT")
    parser.add_argument("--split-seed", type=int, default=0)
    parser.add_argument("--samples", type=int, default=256, help="at most this many samples")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--chunk-frames", type=int, help="video: light decoders that decode in chunks take this "
                        "many frames at a time (default: whole clips)")
    parser.add_argument("--video-features", metavar="MODULE:CALLABLE", help="video: a feature network (clips -> "
                        "features) for a Fréchet distance, e.g. your I3D for FVD")
    parser.add_argument("--full", action="store_true", help="the terminal's table with every column (wider)")
    parser.add_argument("--out", required=True, help="where eval.json, eval.md and grid.png go (any fsspec URL)")
    args = parser.parse_args(argv)
    if not args.decoder and not args.linear_fit and not args.baseline:
        raise ConfigError("--decoder", "", detail="give at least one --decoder (or --baseline, --linear-fit)")
    fold_linear_fit(args)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    job = OutputLayout(args.input).read_job()
    args.model = args.model or (job or {}).get("spec", {}).get("model", {}).get("reference") or "tiny"
    if is_video_output(job):
        return eval_video.run(args, device)
    keys, latents, images = load_eval_set(args.input, args.held_out_fraction, args.split_seed, args.samples)
    reference = load_decoder(MODEL_VAE, args.model, device, "float32")
    teacher = is_vae_dir(args.model)
    reference.name = f"teacher {args.model}" if teacher else f"{args.model} VAE"
    chosen = load_decoders(args.decoder, device)
    training = training_set(args, latents, images)
    upscale = images.shape[-1] // latents.shape[-1]
    chosen += [b.to(device) for b in baseline_decoders(args.baseline, training, latents.shape[1], upscale)]
    for decoder in chosen:
        if decoder.latent_channels != latents.shape[1]:
            raise ConfigError("--decoder", "", detail=f"{decoder.name} decodes {decoder.latent_channels}-channel "
                              f"latents; {args.input} holds {latents.shape[1]}-channel latents")
    try:
        lpips = LPIPS().to(device)
    except LPIPSWeightsMissing:  # said once, on the table's LPIPS line (lpips_status)
        lpips = None
    result = evaluate(chosen, reference, keys, latents, images, lpips, args.batch_size)
    result["reference"] = {"name": reference.name, "model": args.model, "teacher": teacher}
    if training is not None:
        result["baselines_from"] = training.description
    outputs = result.pop("_outputs")
    write_files(args.out, result, render_markdown(result), render_grid([("original", images), *outputs.items()]))
    print(render_terminal(result, args.out, args.full))
    return 0
