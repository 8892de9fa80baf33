"""`latentmill verify`, `latentmill report` and `latentmill get`: commands that read a job's output."""

from __future__ import annotations

import json
import os
import sys

from jobs.cli.common import CHECKS, add_storage_arguments, storage_config


def add_parser(commands) -> None:
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
    add_storage_arguments(verify)
    verify.set_defaults(func=_verify)

    report = commands.add_parser("report", help="print the throughput report of a finished or running job")
    report.add_argument("output", help="the job's output URL")
    report.add_argument("--json", action="store_true", help="print report.json instead of the readable report")
    report.add_argument("--full", action="store_true", help="every per-stage column (wider than 100 columns)")
    report.add_argument("--write", action="store_true", help="also (re)write report.json, report.md and report.png there")
    add_storage_arguments(report)
    report.set_defaults(func=_report)

    get = commands.add_parser("get", help="extract one sample's files by its key (one range read per file)")
    get.add_argument("output", help="the job's output URL")
    get.add_argument("key", help="the sample's key, e.g. 000000042")
    get.add_argument("--out", default=".", help="local folder to write KEY.png, KEY.txt, KEY.json, ... to (default: .)")
    add_storage_arguments(get)
    get.set_defaults(func=_get)


def _verify(args) -> int:
    from pipelines.verify import verify_output, verify_quality  # pyarrow: `latentmill run` speaks before it loads

    quality = verify_quality(args.output, storage_config(args)) if args.quality else None
    result = verify_output(args.output, storage_config(args), full=args.check == "full", strict=args.strict)
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
    """A mean from pipelines/observe/quality.py: a float, None (nothing monitored) or "inf" (identical images)."""
    return value if isinstance(value, str) else "-" if value is None else f"{value:.{digits}f}"


def _report(args) -> int:
    # The report module draws charts (matplotlib): loaded only for this command.
    from pipelines.observe.report import build_job_report, open_job_output, write_job_report
    from pipelines.observe.report_text import render_terminal

    layout = open_job_output(args.output, storage_config(args))
    report = write_job_report(layout) if args.write else build_job_report(layout)
    if args.json:
        print(json.dumps(report, indent=2, sort_keys=True))
    else:
        print(render_terminal(report, full=args.full))
    return 0


def _get(args) -> int:
    # lazy: keeps pyarrow out of processes that never call this
    from pipelines.observe.report import open_job_output
    from pipelines.sample_access import key_file, manifest_row, read_files

    layout = open_job_output(args.output, storage_config(args))
    row = manifest_row(layout, args.key)
    if row.get("status", "ok") != "ok":
        print(f"error: sample {args.key} is {row['status']}: {row.get('error')}", file=sys.stderr)
        return 1
    os.makedirs(args.out, exist_ok=True)
    for ext, data in read_files(layout, row).items():
        path = os.path.join(args.out, key_file(args.key, ext))
        with open(path, "wb") as f:
            f.write(data)
        print(path)
    return 0
