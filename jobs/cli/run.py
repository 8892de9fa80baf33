"""`latentmill run`: a job spec on the current Ray cluster (a local one if none), or --dry-run."""

from __future__ import annotations

import json
import sys

from jobs.cli.common import CHECKS
from pipelines.errors import ConfigError, Interrupted
from pipelines.observe.phases import phase
from pipelines.observe.progress import LiveProgress


def add_parser(commands) -> None:
    run = commands.add_parser("run", help="run a job spec on the current Ray cluster (a local one if none)")
    run.add_argument("spec", help="job spec YAML (local path or fsspec URL)")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                     help="override a spec field, e.g. --set sampler.steps=20 (repeatable)")
    run.add_argument("--dry-run", action="store_true", help="print the resolved plan and run nothing")
    run.add_argument("--estimate", action="store_true",
                     help="run one batch per stage on the real actors (after a warm-up batch), write nothing, and print "
                          "the projected throughput, bottleneck, wall time, cost and the concurrency: auto split")
    run.add_argument("--json", action="store_true", help="with --estimate: print the estimate as JSON")
    run.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else start a local cluster)")
    run.add_argument("--quiet", action="store_true", help="no progress lines")
    run.add_argument("--verbose", action="store_true",
                     help="also show Ray's own lines (its warnings, workers' output, task retries) on the screen")
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
    if args.json and not args.estimate:
        raise ConfigError("--json", "", detail="goes with --estimate (a run's report as JSON: `latentmill report URL --json`)")
    if args.estimate and args.dry_run:
        raise ConfigError("--estimate", "", detail="--dry-run runs nothing and --estimate runs one batch per stage: choose one")
    if args.dry_run or args.quiet:
        return _run_shown(args, None)
    with LiveProgress("latentmill") as display:  # phase lines from the first second, then the bar
        return _run_shown(args, display)


def _run_shown(args, display: LiveProgress | None) -> int:
    # On a terminal the first second already says something; in logs a bad spec stays one error line.
    starting = phase if display is not None and display.tty else lambda text: None
    starting(f"reading {args.spec}")
    # After the first phase line: the kinds, pyarrow and numpy take a second on a busy machine.
    from jobs.dry_run import dry_run
    from jobs.kinds import kind_of
    from jobs.local import run_job
    from jobs.ops.nightly import run_with_upkeep
    from jobs.preflight import check_output_location
    from jobs.spec import load_spec
    from pipelines.faults import Fault

    spec = load_spec(args.spec, args.overrides, date=args.date)
    faults = tuple(Fault.parse(text) for text in args.inject_fault)
    check_output_location(spec.output.url)  # before Ray starts, with or without --dry-run
    if args.dry_run:
        print(dry_run(spec, faults))
        return 0
    if args.estimate:
        return _print_estimate(args, spec, faults, display)
    kind = kind_of(spec)
    if display is not None:
        display.label = spec.name
    starting(f"{spec.name}: a {spec.kind} job; planning, checking its inputs and output")

    def run() -> dict:
        return run_job(spec, address=args.address, progress=display if display is not None else False,
                       verbose=args.verbose, start_timeout_s=args.start_timeout, retry_failed=args.retry_failed,
                       faults=faults, check_full=args.check == "full", wait=args.wait)

    report = run_with_upkeep(spec, run) if kind.dated else run()
    if display is not None:
        display.stop()
    if kind.summary is not None:
        print(kind.summary(spec, report))
        return 0
    return _print_shard_summary(spec, report)


def _print_estimate(args, spec, faults, display: LiveProgress | None) -> int:
    """`--estimate`: the table (or `--json`) on stdout once the stages are measured; the output is untouched."""
    # lazy: Ray and the engine load only when an estimate runs
    from jobs.estimate.job import estimate
    from jobs.estimate.render import render

    try:
        result = estimate(spec, address=args.address, verbose=args.verbose, start_timeout_s=args.start_timeout,
                          faults=faults)
    except KeyboardInterrupt:
        raise Interrupted(f"estimate interrupted; nothing was written to {spec.output.url}") from None
    if display is not None:
        display.stop()
    print(json.dumps(result, indent=2) if args.json else render(result))
    return 0


def _print_shard_summary(spec, report: dict) -> int:
    """The run's summary; exit 1 while the output holds failed samples (as `verify` counts them)."""
    # lazy: keeps pyarrow, numpy out of processes that never call this
    from pipelines.models.random_models import NOISE_NOTE, is_random_model
    from pipelines.verify import failed_samples  # reads the output's index and manifests (pyarrow)

    print(run_summary(spec.name, report, spec.output.url))
    if report["generated"] or report["failed"]:
        print(f"throughput, bottleneck and cost: `latentmill report {spec.output.url}` (or its report.md)")
    if is_random_model(spec.model.reference):
        print(f"note: model.reference {spec.model.reference}: {NOISE_NOTE}")
    failed = failed_samples(spec.output.url, spec.output.storage)  # the output's, as verify counts them
    if failed:
        print(
            f"error: {failed} samples failed after their retries and are recorded as failed in the shard "
            f"manifests; `latentmill verify` lists them; rerun with --retry-failed to try them again",
            file=sys.stderr,
        )
        return 1
    return 0


def run_summary(name: str, report: dict, url: str) -> str:
    """The one line a finished run leaves, in the kind's words (Pipeline.units)."""
    units = report.get("units") or {}
    many, verb = units.get("plural", "samples"), units.get("verb", "processed")
    done = report["already_committed"] + report["generated"]
    if not report["to_generate"]:
        return f"{name}: nothing to do: {done}/{report['planned']} {many} already committed; output {url}"
    steady = report.get("steady_per_s")  # the bar's rate; the overall one counts start-up too
    rates = f"{report['samples_per_s'] or 0:.2f}/s overall" + (f", {steady:.2f}/s steady" if steady else "")
    return (f"{name}: {report['generated']} {many} {verb} in {report['wall_s']:.1f} s ({rates}); "
            f"{report['already_committed']} were already committed; output {url}")
