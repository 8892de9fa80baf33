"""The `latentmill` command line.

Exit codes, for every command: 0 ok; 1 the job or the output failed (the message says what, and
what to rerun); 2 a usage or spec error; 130 stopped with Ctrl-C (committed shards kept).
"""

from __future__ import annotations

import argparse
import json
import sys

from pipelines.errors import ConfigError, Interrupted, LatentmillError

CHECKS = ("size", "full")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="latentmill", description="Generate image datasets with diffusion models on Ray.")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run a job spec on the current Ray cluster (a local one if none)")
    run.add_argument("spec", help="job spec YAML (local path or fsspec URL)")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                     help="override a spec field, e.g. --set sampler.steps=20 (repeatable)")
    run.add_argument("--dry-run", action="store_true", help="print the resolved plan and run nothing")
    run.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else start a local cluster)")
    run.add_argument("--quiet", action="store_true", help="no progress lines")
    run.add_argument("--start-timeout", type=float, default=900.0,
                     help="seconds to wait for stage actors to start, and for a stage that lost every actor to get one back")
    run.add_argument("--retry-failed", action="store_true", help="also regenerate samples recorded as failed")
    run.add_argument("--wait", action="store_true",
                     help="if another driver is writing the output, wait for it to finish instead of refusing")
    run.add_argument("--check", choices=CHECKS, default="size",
                     help="how committed shards are checked before resuming: size (default) or full (also sha256)")
    run.add_argument("--inject-fault", action="append", default=[], metavar="STAGE:KIND:KEY[:TIMES]",
                     help="for fault-tolerance testing: make a stage raise (or return NaN) for a sample")
    run.add_argument("--date", help="YYYY-MM-DD for {date} in output.url and prompts.file (default: today, UTC)")

    submit = commands.add_parser("submit", help="submit a job spec to a running Ray cluster (Ray Jobs API)")
    submit.add_argument("spec", help="job spec YAML; it and the local files it names are shipped with the job")
    submit.add_argument("--address", help="the cluster's dashboard URL, e.g. http://HEAD:8265 (default: RAY_ADDRESS)")
    submit.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a spec field (repeatable)")
    submit.add_argument("--date", help="YYYY-MM-DD for {date} and the submission id (default: today, UTC)")
    submit.add_argument("--again", action="store_true",
                        help="submit even if this job already succeeded for this date (a new attempt id)")
    for name, text in (("status", "status of a submitted job"), ("logs", "logs of a submitted job"),
                       ("stop", "stop a submitted job (committed shards stay; resubmit to resume)")):
        command = commands.add_parser(name, help=text)
        command.add_argument("id", help="the submission id `latentmill submit` printed")
        command.add_argument("--address", help="the cluster's dashboard URL (default: RAY_ADDRESS)")
        if name == "logs":
            command.add_argument("--follow", action="store_true", help="keep printing until the job ends")
    jobs = commands.add_parser("jobs", help="list the jobs submitted to a cluster")
    jobs.add_argument("--address", help="the cluster's dashboard URL (default: RAY_ADDRESS)")

    k8s = commands.add_parser("k8s", help="Kubernetes (KubeRay) manifests")
    k8s_commands = k8s.add_subparsers(dest="k8s", required=True)
    render = k8s_commands.add_parser("render", help="write RayCluster/RayJob/RayCronJob/CronJob manifests for a spec")
    render.add_argument("spec", help="job spec YAML")
    render.add_argument("--image", required=True, help="container image with latentmill installed (infra/docker)")
    render.add_argument("--schedule", help="cron schedule (UTC) for nightly builds, e.g. '0 2 * * *'")
    render.add_argument("--out", default="k8s", help="directory to write the manifests to (default: ./k8s)")
    render.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a spec field (repeatable)")

    verify = commands.add_parser("verify", help="check a job output for completeness and consistency")
    verify.add_argument("output", help="the job's output URL")
    verify.add_argument("--json", action="store_true", help="print one JSON object")
    verify.add_argument("--strict", action="store_true",
                        help="also fail (exit 1) when inputs were rejected as unreadable (encode jobs)")
    verify.add_argument("--check", choices=CHECKS, default="size",
                        help="full: also compare every tar's and manifest's sha256 with its commit marker")
    verify.add_argument("--quality", action="store_true",
                        help="also fail (exit 1) when a shard's quality monitor figures are below the spec's "
                             "min_psnr/min_ssim; a job without quality_monitor is a usage error (exit 2)")
    _add_storage_arguments(verify)

    report = commands.add_parser("report", help="print the throughput report of a finished or running job")
    report.add_argument("output", help="the job's output URL")
    report.add_argument("--json", action="store_true", help="print report.json instead of the readable report")
    report.add_argument("--write", action="store_true", help="also (re)write report.json, report.md and report.png there")
    _add_storage_arguments(report)

    commands.add_parser("eval", help="decode held-out latents with several decoders: PSNR, SSIM, LPIPS, speed",
                        add_help=False)

    bench = commands.add_parser("bench", help="benchmarks that print tables")
    bench_commands = bench.add_subparsers(dest="bench", required=True)
    bench_commands.add_parser("decoders", help="decoder FLOPs, latency and memory", add_help=False)
    bench_commands.add_parser("gpu", help="every GPU figure: decoders, SDXL denoise, end to end, SVD-XT, a profile",
                              add_help=False)
    bench_commands.add_parser("scale", help="10K/100K-image runs: throughput and peak memory", add_help=False)
    bench_commands.add_parser("sources", help="driver memory and time to plan a 1M-image list", add_help=False)
    bench_commands.add_parser("pipeline", help="each stage alone vs the pipeline vs a naive diffusers loop",
                              add_help=False)
    bench_commands.add_parser("scheduler", help="dozens of logical GPUs, synthetic stages: efficiency vs the ideal, "
                              "Ray Data side by side, concurrency auto", add_help=False)

    args, rest = parser.parse_known_args(argv)
    if rest and args.command not in ("bench", "eval"):
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    try:
        if args.command == "run":
            return _run(args)
        if args.command == "verify":
            return _verify(args)
        if args.command == "report":
            return _report(args)
        if args.command == "eval":
            from jobs.eval import main as evaluate

            return evaluate(rest)
        if args.command in ("submit", "status", "logs", "stop", "jobs"):
            from jobs.submit import COMMANDS

            return COMMANDS[args.command](args)
        if args.command == "k8s":
            from jobs.k8s import render_command

            return render_command(args)
        if args.command == "bench" and args.bench == "pipeline":
            from jobs.bench_pipeline import main as bench_pipeline

            return bench_pipeline(rest)
        if args.command == "bench" and args.bench == "decoders":
            from decoders.bench import main as bench_decoders

            return bench_decoders(rest)
        if args.command == "bench" and args.bench == "sources":
            from jobs.bench_sources import main as bench_sources

            return bench_sources(rest)
        if args.command == "bench" and args.bench == "scheduler":
            from jobs.bench_scheduler import main as bench_scheduler

            return bench_scheduler(rest)
        if args.command == "bench" and args.bench == "gpu":
            from jobs.bench_gpu import main as bench_gpu

            return bench_gpu(rest)
        if args.command == "bench" and args.bench == "scale":
            from jobs.bench_scale import main as bench_scale

            return bench_scale(rest)
    except Interrupted as exc:
        print(exc, file=sys.stderr)
        return exc.exit_code
    except LatentmillError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted; committed shards are kept, rerun the same command to resume", file=sys.stderr)
        return 130
    return 1


def _add_storage_arguments(parser) -> None:
    """How verify and report reach object storage: as output.storage in a spec (names of the
    environment variables that hold the keys, never the keys)."""
    group = parser.add_argument_group("object storage (as output.storage in a spec)")
    group.add_argument("--endpoint-url", help="S3-compatible endpoint, e.g. http://127.0.0.1:9000")
    group.add_argument("--region")
    group.add_argument("--profile", help="AWS profile name")
    group.add_argument("--access-key-id-env", metavar="VAR", help="environment variable holding the access key id")
    group.add_argument("--secret-access-key-env", metavar="VAR", help="environment variable holding the secret key")
    group.add_argument("--session-token-env", metavar="VAR", help="environment variable holding a session token")


def _storage(args):
    from pipelines.config import StorageConfig

    fields = ("endpoint_url", "region", "profile", "access_key_id_env", "secret_access_key_env", "session_token_env")
    try:
        return StorageConfig(**{name: getattr(args, name) for name in fields})
    except ConfigError as exc:
        raise ConfigError("", "", detail=f"storage options: {exc}") from None


def _run(args) -> int:
    from jobs.local import pipeline_for, run_job
    from jobs.spec import load_spec
    from pipelines.faults import Fault

    spec = load_spec(args.spec, args.overrides, date=args.date)
    if args.dry_run:
        from jobs.dry_run import describe

        print(describe(spec, pipeline_for(spec)))
        return 0
    from jobs.nightly import run_with_upkeep
    from pipelines.models.random_models import NOISE_NOTE, is_random_model

    faults = tuple(Fault.parse(text) for text in args.inject_fault)
    report = run_with_upkeep(spec, lambda: run_job(
        spec,
        address=args.address,
        progress=not args.quiet,
        start_timeout_s=args.start_timeout,
        retry_failed=args.retry_failed,
        faults=faults,
        check_full=args.check == "full",
        wait=args.wait,
    ))
    if spec.kind == "train-decoder":
        from jobs.train_report import summary_line

        print(summary_line(report, spec.output.url))
        return 0
    print(
        f"{spec.name}: generated {report['generated']} samples in {report['wall_s']:.1f} s "
        f"({report['samples_per_s'] or 0:.2f}/s); {report['already_committed']} were already committed; "
        f"output {spec.output.url}"
    )
    print(f"throughput, bottleneck and cost: {spec.output.url}/report.md (or `latentmill report {spec.output.url}`)")
    if is_random_model(getattr(getattr(spec, "model", None), "reference", "")):
        print(f"note: model.reference {spec.model.reference}: {NOISE_NOTE}")
    if report["failed"]:
        print(
            f"warning: {report['failed']} samples failed after their retries and are recorded as failed in the "
            f"shard manifests; `latentmill verify` lists them; rerun with --retry-failed to try them again",
            file=sys.stderr,
        )
    return 0


def _verify(args) -> int:
    from pipelines.verify import verify_output, verify_quality

    quality = verify_quality(args.output, _storage(args)) if args.quality else None
    result = verify_output(args.output, _storage(args), full=args.check == "full", strict=args.strict)
    ok = result["ok"] and (quality is None or quality["ok"])
    if quality is not None:
        result = {**result, "quality": quality}
    if args.json:
        print(json.dumps(result, sort_keys=True))
    else:
        status = "OK" if result["ok"] else "FAILED"
        print(
            f"{status}: {result['samples']}/{result['planned']} samples, {result['unique_keys']} unique keys, "
            f"{result['duplicates']} duplicates, {result['missing']} missing, {result['failed']} failed, "
            f"{result['rejected']} rejected, {result['committed_shards']}/{result['planned_shards']} shards committed"
        )
        if result["rejected"]:
            print(f"  - rejected inputs (unreadable source data, reasons in the manifests): "
                  f"{', '.join(result['rejected_keys'])}")
        if result["failed"]:
            print(f"  - failed samples (recorded, retry with --retry-failed): {', '.join(result['failed_keys'])}")
        if result["unindexed_shards"]:
            print(f"  - committed but not yet in index.json (an interrupted run): "
                  f"{', '.join(result['unindexed_shards'])}")
        for problem in result["problems"]:
            print(f"  - {problem}")
        for hint in result["repair"]:
            print(f"repair: {hint}")
        if quality is not None:
            _print_quality(quality)
    return 0 if ok else 1


def _print_quality(q: dict) -> None:
    thresholds = ", ".join(f"{name} {q[name]:g}" for name in ("min_psnr", "min_ssim") if q[name] is not None)
    print(f"quality {'OK' if q['ok'] else 'FAILED'}: {q['decoder']} vs {q['reference']} on {q['monitored']} monitored "
          f"samples: mean PSNR {_figure(q['psnr'], 2)} dB, SSIM {_figure(q['ssim'], 4)}; "
          + (f"thresholds {thresholds}" if thresholds else "no thresholds in the spec (nothing can be flagged)"))
    for flag in q["flagged"]:
        print(f"  - shard {flag['shard']}: {flag['why']}")


def _figure(value, digits: int) -> str:
    """A mean from pipelines/quality.py: a float, None (nothing monitored) or "inf" (identical images)."""
    return value if isinstance(value, str) else "-" if value is None else f"{value:.{digits}f}"


def _report(args) -> int:
    from pipelines.report import build_job_report, open_job_output, render_markdown, write_job_report

    layout = open_job_output(args.output, _storage(args))
    report = write_job_report(layout) if args.write else build_job_report(layout)
    if args.json:
        print(json.dumps(report, indent=2, sort_keys=True))
    else:
        print(render_markdown(report, chart=layout.fs.exists(layout.path("report.png"))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
