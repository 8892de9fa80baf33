"""`latentmill run`: a job spec on the current Ray cluster (a local one if none), or --dry-run."""

from __future__ import annotations

import sys

from jobs.cli.common import CHECKS
from jobs.dry_run import describe
from jobs.kinds import kind_of
from jobs.local import run_job
from jobs.ops.nightly import run_with_upkeep
from jobs.spec import load_spec
from pipelines.faults import Fault
from pipelines.models.random_models import NOISE_NOTE, is_random_model


def add_parser(commands) -> None:
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
    run.set_defaults(func=run_command)


def run_command(args) -> int:
    spec = load_spec(args.spec, args.overrides, date=args.date)
    if args.dry_run:
        print(describe(spec))
        return 0
    kind = kind_of(spec)
    faults = tuple(Fault.parse(text) for text in args.inject_fault)

    def run() -> dict:
        return run_job(spec, address=args.address, progress=not args.quiet, start_timeout_s=args.start_timeout,
                       retry_failed=args.retry_failed, faults=faults, check_full=args.check == "full", wait=args.wait)

    report = run_with_upkeep(spec, run) if kind.dated else run()
    if kind.summary is not None:
        print(kind.summary(spec, report))
        return 0
    _print_shard_summary(spec, report)
    return 0


def _print_shard_summary(spec, report: dict) -> None:
    print(
        f"{spec.name}: generated {report['generated']} samples in {report['wall_s']:.1f} s "
        f"({report['samples_per_s'] or 0:.2f}/s); {report['already_committed']} were already committed; "
        f"output {spec.output.url}"
    )
    print(f"throughput, bottleneck and cost: {spec.output.url}/report.md (or `latentmill report {spec.output.url}`)")
    if is_random_model(spec.model.reference):
        print(f"note: model.reference {spec.model.reference}: {NOISE_NOTE}")
    if report["failed"]:
        print(
            f"warning: {report['failed']} samples failed after their retries and are recorded as failed in the "
            f"shard manifests; `latentmill verify` lists them; rerun with --retry-failed to try them again",
            file=sys.stderr,
        )
