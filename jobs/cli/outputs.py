"""`latentmill verify` and `latentmill report`: commands that read a job's output."""

from __future__ import annotations

import json

from jobs.cli.common import CHECKS
from pipelines.config import StorageConfig
from pipelines.errors import ConfigError
from pipelines.verify import verify_output, verify_quality


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
    _add_storage_arguments(verify)
    verify.set_defaults(func=_verify)

    report = commands.add_parser("report", help="print the throughput report of a finished or running job")
    report.add_argument("output", help="the job's output URL")
    report.add_argument("--json", action="store_true", help="print report.json instead of the readable report")
    report.add_argument("--write", action="store_true", help="also (re)write report.json, report.md and report.png there")
    _add_storage_arguments(report)
    report.set_defaults(func=_report)


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
    fields = ("endpoint_url", "region", "profile", "access_key_id_env", "secret_access_key_env", "session_token_env")
    try:
        return StorageConfig(**{name: getattr(args, name) for name in fields})
    except ConfigError as exc:
        raise ConfigError("", "", detail=f"storage options: {exc}") from None


def _verify(args) -> int:
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
    # The report module draws charts (matplotlib): loaded only for this command.
    from pipelines.report import build_job_report, open_job_output, render_markdown, write_job_report

    layout = open_job_output(args.output, _storage(args))
    report = write_job_report(layout) if args.write else build_job_report(layout)
    if args.json:
        print(json.dumps(report, indent=2, sort_keys=True))
    else:
        print(render_markdown(report, chart=layout.fs.exists(layout.path("report.png"))))
    return 0
