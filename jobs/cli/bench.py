"""`latentmill eval` and `latentmill bench ...`: commands that parse their own arguments (the rest
of the command line), so each imports its module (torch, Ray) only when it runs."""

from __future__ import annotations


def add_parser(commands) -> None:
    commands.add_parser("eval", help="decode held-out latents with several decoders: PSNR, SSIM, LPIPS, speed",
                        add_help=False).set_defaults(func=_eval, passthrough=True)
    bench = commands.add_parser("bench", help="benchmarks that print tables")
    bench_commands = bench.add_subparsers(dest="bench", required=True)
    bench_commands.add_parser("decoders", help="decoder FLOPs, latency and memory", add_help=False)
    bench_commands.add_parser("gpu", help="every GPU figure: decoders, SDXL denoise, end to end, SVD-XT, a profile",
                              add_help=False)
    bench_commands.add_parser("scale", help="10K/100K-image runs: throughput and peak memory", add_help=False)
    bench_commands.add_parser("sources", help="driver memory and time to plan a 1M-image list", add_help=False)
    bench_commands.add_parser("pipeline", help="each stage alone vs the pipeline vs a naive diffusers loop",
                              add_help=False)
    bench_commands.add_parser("browse", help="the browser page on a 100K-image output, local and S3, cold and warm",
                              add_help=False)
    bench_commands.add_parser("scheduler", help="dozens of logical GPUs, synthetic stages: efficiency vs the ideal, "
                              "Ray Data side by side, concurrency auto", add_help=False)
    for name, func in (("decoders", _bench_decoders), ("gpu", _bench_gpu), ("scale", _bench_scale),
                       ("sources", _bench_sources), ("pipeline", _bench_pipeline), ("browse", _bench_browse),
                       ("scheduler", _bench_scheduler)):
        bench_commands.choices[name].set_defaults(func=func, passthrough=True)


# Each imports its benchmark when it runs: they load torch or Ray, which other commands do not need.
def _eval(args) -> int:
    # lazy: keeps torch, pyarrow, numpy out of processes that never call this
    from jobs.eval.images import main

    return main(args.rest)


def _bench_decoders(args) -> int:
    # lazy: keeps torch out of processes that never call this
    from decoders.bench import main

    return main(args.rest)


def _bench_gpu(args) -> int:
    # lazy: keeps torch out of processes that never call this
    from jobs.bench.gpu import main

    return main(args.rest)


def _bench_scale(args) -> int:
    # lazy: keeps psutil out of processes that never call this
    from jobs.bench.scale import main

    return main(args.rest)


def _bench_sources(args) -> int:
    # lazy: keeps `latentmill` start fast (first phase line within ~1 s)
    from jobs.bench.sources import main

    return main(args.rest)


def _bench_pipeline(args) -> int:
    # lazy: keeps `latentmill` start fast (first phase line within ~1 s)
    from jobs.bench.pipeline import main

    return main(args.rest)


def _bench_browse(args) -> int:
    # lazy: keeps numpy out of processes that never call this
    from jobs.bench.browse import main

    return main(args.rest)


def _bench_scheduler(args) -> int:
    # lazy: keeps numpy out of processes that never call this
    from jobs.bench.scheduler import main

    return main(args.rest)
