"""`latentmill submit/status/logs/stop/jobs`: jobs on a running Ray cluster (Ray Jobs API)."""

from __future__ import annotations

from jobs.ops.submit import COMMANDS


def add_parser(commands) -> None:
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
    for name in ("submit", "status", "logs", "stop", "jobs"):
        commands.choices[name].set_defaults(func=cluster_command)


def cluster_command(args) -> int:
    return COMMANDS[args.command](args)
