"""`latentmill k8s render`: Kubernetes (KubeRay) manifests for a spec."""

from __future__ import annotations

from jobs.ops.k8s import render_command


def add_parser(commands) -> None:
    k8s = commands.add_parser("k8s", help="Kubernetes (KubeRay) manifests")
    k8s_commands = k8s.add_subparsers(dest="k8s", required=True)
    render = k8s_commands.add_parser("render", help="write RayCluster/RayJob/RayCronJob/CronJob manifests for a spec")
    render.add_argument("spec", help="job spec YAML")
    render.add_argument("--image", required=True, help="container image with latentmill installed (infra/docker)")
    render.add_argument("--schedule", help="cron schedule (UTC) for nightly builds, e.g. '0 2 * * *'")
    render.add_argument("--out", default="k8s", help="directory to write the manifests to (default: ./k8s)")
    render.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a spec field (repeatable)")
    render.set_defaults(func=render_command)
