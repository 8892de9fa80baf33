"""The `latentmill` command line."""

from __future__ import annotations

import argparse
import json
import sys

from pipelines.errors import LatentmillError


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
    run.add_argument("--start-timeout", type=float, default=900.0, help="seconds to wait for stage actors to start")
    run.add_argument("--retry-failed", action="store_true", help="also regenerate samples recorded as failed")
    run.add_argument("--inject-fault", action="append", default=[], metavar="STAGE:KIND:KEY[:TIMES]",
                     help="for fault-tolerance testing: make a stage raise (or return NaN) for a sample")

    verify = commands.add_parser("verify", help="check a job output for completeness and consistency")
    verify.add_argument("output", help="the job's output URL")
    verify.add_argument("--json", action="store_true", help="print one JSON object")

    report = commands.add_parser("report", help="print the throughput report of a finished or running job")
    report.add_argument("output", help="the job's output URL")
    report.add_argument("--json", action="store_true", help="print report.json instead of the readable report")
    report.add_argument("--write", action="store_true", help="also (re)write report.json, report.md and report.png there")

    bench = commands.add_parser("bench", help="benchmarks that print tables")
    bench_commands = bench.add_subparsers(dest="bench", required=True)
    bench_commands.add_parser("decoders", help="decoder FLOPs, latency and memory", add_help=False)
    bench_commands.add_parser("scale", help="10K/100K-image runs: throughput and peak memory", add_help=False)
    bench_commands.add_parser("pipeline", help="each stage alone vs the pipeline vs a naive diffusers loop",
                              add_help=False)
    bench_commands.add_parser("scheduler", help="dozens of logical GPUs, synthetic stages: efficiency vs the ideal, "
                              "Ray Data side by side, concurrency auto", add_help=False)

    args, rest = parser.parse_known_args(argv)
    if rest and not (args.command == "bench"):
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    try:
        if args.command == "run":
            return _run(args)
        if args.command == "verify":
            return _verify(args)
        if args.command == "report":
            return _report(args)
        if args.command == "bench" and args.bench == "pipeline":
            from jobs.bench_pipeline import main as bench_pipeline

            return bench_pipeline(rest)
        if args.command == "bench" and args.bench == "decoders":
            from decoders.bench import main as bench_decoders

            return bench_decoders(rest)
        if args.command == "bench" and args.bench == "scheduler":
            from jobs.bench_scheduler import main as bench_scheduler

            return bench_scheduler(rest)
        if args.command == "bench" and args.bench == "scale":
            from jobs.bench_scale import main as bench_scale

            return bench_scale(rest)
    except LatentmillError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 1


def _run(args) -> int:
    from jobs.local import pipeline_for, run_job
    from jobs.spec import load_spec
    from pipelines.faults import Fault

    spec = load_spec(args.spec, args.overrides)
    if args.dry_run:
        from jobs.dry_run import describe

        print(describe(spec, pipeline_for(spec)))
        return 0
    faults = tuple(Fault.parse(text) for text in args.inject_fault)
    report = run_job(
        spec,
        address=args.address,
        progress=not args.quiet,
        start_timeout_s=args.start_timeout,
        retry_failed=args.retry_failed,
        faults=faults,
    )
    print(
        f"{spec.name}: generated {report['generated']} samples in {report['wall_s']:.1f} s "
        f"({report['samples_per_s'] or 0:.2f}/s); {report['already_committed']} were already committed; "
        f"output {spec.output.url}"
    )
    print(f"throughput, bottleneck and cost: {spec.output.url}/report.md (or `latentmill report {spec.output.url}`)")
    if report["failed"]:
        print(
            f"warning: {report['failed']} samples failed after their retries and are recorded as failed in the "
            f"shard manifests; `latentmill verify` lists them; rerun with --retry-failed to try them again",
            file=sys.stderr,
        )
    return 0


def _verify(args) -> int:
    from pipelines.verify import verify_output

    result = verify_output(args.output)
    if args.json:
        print(json.dumps(result, sort_keys=True))
    else:
        status = "OK" if result["ok"] else "FAILED"
        print(
            f"{status}: {result['samples']}/{result['planned']} samples, {result['unique_keys']} unique keys, "
            f"{result['duplicates']} duplicates, {result['missing']} missing, {result['failed']} failed, "
            f"{result['committed_shards']}/{result['planned_shards']} shards committed"
        )
        if result["failed"]:
            print(f"  - failed samples (recorded, retry with --retry-failed): {', '.join(result['failed_keys'])}")
        for problem in result["problems"]:
            print(f"  - {problem}")
    return 0 if result["ok"] else 1


def _report(args) -> int:
    from pipelines.report import build_job_report, open_job_output, render_markdown, write_job_report

    layout = open_job_output(args.output)
    report = write_job_report(layout) if args.write else build_job_report(layout)
    if args.json:
        print(json.dumps(report, indent=2, sort_keys=True))
    else:
        print(render_markdown(report, chart=layout.fs.exists(layout.path("report.png"))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
