"""`latentmill eval` and `latentmill bench ...`: commands that parse their own arguments (the rest
of the command line), so each imports its module (torch, Ray) only when it runs."""

from __future__ import annotations

import importlib

EVAL = ("jobs.eval.images", "decode held-out latents with several decoders: PSNR, SSIM, LPIPS, speed")
# bench NAME: the module whose main(argv) runs it, and its help line.
BENCHES = {
    "decoders": ("decoders.bench", "decoder FLOPs, latency and memory"),
    "gpu": ("jobs.bench.gpu", "every GPU figure: decoders, SDXL denoise, end to end, SVD-XT, a profile"),
    "scale": ("jobs.bench.scale", "10K/100K-image runs: throughput and peak memory"),
    "sources": ("jobs.bench.sources", "driver memory and time to plan a 1M-image list"),
    "pipeline": ("jobs.bench.pipeline", "each stage alone vs the pipeline vs a naive diffusers loop"),
    "browse": ("jobs.bench.browse", "the browser page on a 100K-image output, local and S3, cold and warm"),
    "scheduler": ("jobs.bench.scheduler", "dozens of logical GPUs, synthetic stages: efficiency vs the ideal, "
                  "Ray Data side by side, concurrency auto"),
}


def add_parser(commands) -> None:
    commands.add_parser("eval", help=EVAL[1], add_help=False).set_defaults(
        func=_run_module, module=EVAL[0], passthrough=True)
    bench = commands.add_parser("bench", help="benchmarks that print tables")
    bench_commands = bench.add_subparsers(dest="bench", required=True)
    for name, (module, text) in BENCHES.items():
        bench_commands.add_parser(name, help=text, add_help=False).set_defaults(
            func=_run_module, module=module, passthrough=True)


def _run_module(args) -> int:
    """Import the command's module now, not at start-up: benchmarks load torch, Ray or numpy, which
    other commands do not need (the first phase line of `latentmill run` comes within ~1 s)."""
    return importlib.import_module(args.module).main(args.rest)
