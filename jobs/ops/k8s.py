"""`latentmill k8s render`: KubeRay manifests that run one job spec on Kubernetes.

    configmap.yaml    the spec (and a local prompt file) as a ConfigMap, mounted on the head
    raycluster.yaml   a long-lived RayCluster: head, a GPU group for denoise and decode, a CPU group for writes
    rayjob.yaml       a RayJob: its own cluster from the same spec, deleted when the job ends
    raycronjob.yaml   (--schedule) a RayCronJob: the RayJob on a schedule. KubeRay alpha: needs the
                      operator's RayCronJob feature gate, off by default
    cronjob.yaml      (--schedule) a plain Kubernetes CronJob running `latentmill submit` against the
                      long-lived RayCluster, for operators without that gate

Stage resources map to worker groups: stages that ask for GPUs share the GPU group (one pod
holds what the largest GPU actor asks for; replicas go from the minimum to the maximum actors),
writes and CPU-only stages go to the CPU group. Storage credentials come from the optional
Secret `latentmill-storage` (as environment variables), never from the spec.
"""

from __future__ import annotations

import math
import re
import sys
from pathlib import Path

import yaml

from jobs.ops.k8s_validate import validate_manifest
from pipelines.errors import ConfigError

SPEC_DIR = "/etc/latentmill"
CLUSTER_NAME = "latentmill"  # the long-lived cluster the CronJob submits to
STORAGE_SECRET = "latentmill-storage"  # optional: S3 keys etc. as environment variables
RAY_TOKEN_SECRET = "latentmill-ray-token"  # optional: key `token`, when the cluster uses Ray token auth
CPU_POD_CPUS = 4
GPU_POD_MEMORY_GI_PER_GPU = 32
FINISHED_CLUSTER_TTL_S = 60
AUTOSCALER_IDLE_S = 60  # a worker pod with nothing to do for this long is removed (in-tree autoscaling)
# Ray's object store lives in /dev/shm; a container's default /dev/shm is 64 MiB, so it gets a
# memory-backed emptyDir of the size Ray would pick for its store (30% of the pod's memory).
OBJECT_STORE_MEMORY_FRACTION = 0.3
CRON_FIELD = re.compile(r"^[\d*/,\-A-Za-z?]+$")


def render(spec_path: str, image: str, schedule: str | None = None, overrides: list[str] = ()) -> dict[str, dict]:
    """file name -> manifest, each validated against its schema."""
    # lazy: keeps pyarrow, PIL, numpy out of processes that never call this
    from jobs.ops.submit import check_output_for_cluster
    from jobs.spec import load_spec, read_spec_text, spec_data

    spec = load_spec(spec_path, overrides)
    check_output_for_cluster(spec.output.url)
    if schedule is not None:
        _check_schedule(schedule)
    data, _ = spec_data(read_spec_text(spec_path), spec_path, overrides)
    files = {"spec.yaml": None}
    _ship_prompts(data, files)
    files["spec.yaml"] = yaml.safe_dump(data, sort_keys=False)
    slug = re.sub(r"[^a-z0-9]+", "-", spec.name.lower()).strip("-")[:40] or "job"
    config_name = f"latentmill-{slug}-spec"
    cluster_spec = cluster_spec_for(spec, image, config_name)
    job_spec = {
        "entrypoint": f"latentmill run {SPEC_DIR}/spec.yaml",
        # The job's cluster (its GPU pods) goes soon after the job ends; its driver log stays in the
        # RayJob's status and `kubectl logs` of the submitter pod until then.
        "shutdownAfterJobFinishes": True,
        "ttlSecondsAfterFinished": FINISHED_CLUSTER_TTL_S,
        "backoffLimit": 2,  # a retried job resumes from the committed shards
        "rayClusterSpec": cluster_spec,
    }
    manifests = {
        "configmap.yaml": {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": config_name}, "data": files},
        "raycluster.yaml": _ray("RayCluster", CLUSTER_NAME, cluster_spec_for(spec, image, None)),
        "rayjob.yaml": _ray("RayJob", f"latentmill-{slug}", job_spec),
    }
    if schedule is not None:
        manifests["raycronjob.yaml"] = _ray("RayCronJob", f"latentmill-{slug}-nightly", {
            "schedule": schedule, "timeZone": "Etc/UTC", "jobTemplate": job_spec})
        manifests["cronjob.yaml"] = _submit_cronjob(f"latentmill-{slug}-submit", schedule, image, config_name)
    for name, manifest in manifests.items():
        errors = validate_manifest(manifest, name)
        if errors:  # a bug here, not the user's: the renderer must only write valid manifests
            raise AssertionError("\n".join(errors))
    return manifests


def write_manifests(manifests: dict[str, dict], out_dir: str, header: str) -> list[Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, manifest in manifests.items():
        path = out / name
        path.write_text(header + yaml.dump(manifest, Dumper=_BlockDumper, sort_keys=False, width=120))
        written.append(path)
    return written


class _BlockDumper(yaml.SafeDumper):
    """Multi-line strings (the spec in the ConfigMap) as readable `|` blocks."""


_BlockDumper.add_representer(str, lambda dumper, text: dumper.represent_scalar(
    "tag:yaml.org,2002:str", text, style="|" if "\n" in text else None))


def render_command(args) -> int:
    manifests = render(args.spec, args.image, args.schedule, args.overrides)
    command = f"latentmill k8s render {args.spec} --image {args.image}"
    if args.schedule:
        command += f" --schedule '{args.schedule}'"
    command += "".join(f" --set '{item}'" for item in args.overrides)
    header = f"# Written by `{command}`; validated against KubeRay's CRD schemas.\n"
    for path in write_manifests(manifests, args.out, header):
        print(path)
    print(f"apply: kubectl apply -f {args.out}/configmap.yaml -f {args.out}/rayjob.yaml", file=sys.stderr)
    return 0


def cluster_spec_for(spec, image: str, spec_configmap: str | None) -> dict:
    """Head (no work scheduled on it), a GPU group for GPU stages, a CPU group for writes."""
    stages = spec.stages
    # The quality monitor's actors run only when the spec has one.
    work = [stages.denoise, stages.decode] + ([stages.monitor] if spec.quality_monitor is not None else [])
    gpu_stages = [s for s in work if s.gpus_per_actor(True) > 0]
    cpu_stages = [s for s in work if s.gpus_per_actor(True) == 0]
    groups = []
    if gpu_stages:
        gpus = max(1, math.ceil(max(s.gpus_per_actor(True) for s in gpu_stages)))
        cpus = math.ceil(max(s.num_cpus for s in gpu_stages)) + 1  # +1: Ray's own processes
        low = sum(s.min_actors * s.gpus_per_actor(True) for s in gpu_stages)
        high = sum(s.max_actors * s.gpus_per_actor(True) for s in gpu_stages)
        groups.append(_group("gpu", image, cpus, math.ceil(low / gpus), math.ceil(high / gpus),
                             {"nvidia.com/gpu": str(gpus)}, GPU_POD_MEMORY_GI_PER_GPU * gpus))
    write = stages.write
    cpu_low = write.concurrency * write.num_cpus + sum(s.min_actors * s.num_cpus for s in cpu_stages)
    cpu_high = write.concurrency * write.num_cpus + sum(s.max_actors * s.num_cpus for s in cpu_stages)
    pod_cpus = max(CPU_POD_CPUS, math.ceil(max([write.num_cpus, *(s.num_cpus for s in cpu_stages)])))
    groups.append(_group("cpu", image, pod_cpus, max(1, math.ceil(cpu_low / pod_cpus)),
                         max(1, math.ceil(cpu_high / pod_cpus)), {}, 4 * pod_cpus))
    head_pod = _pod(_container("ray-head", image, 2, {}, 8), 8)
    if spec_configmap:
        head_pod["containers"][0]["volumeMounts"].append({"name": "spec", "mountPath": SPEC_DIR, "readOnly": True})
        head_pod["volumes"].append({"name": "spec", "configMap": {"name": spec_configmap}})
    cluster = {
        # The head runs the driver and the dashboard; stage actors and writes go to workers.
        "headGroupSpec": {"rayStartParams": {"num-cpus": "0", "dashboard-host": "0.0.0.0"},
                          "template": {"spec": head_pod}},
        "workerGroupSpecs": groups,
    }
    if any(g["maxReplicas"] > g["minReplicas"] for g in groups):  # otherwise nothing could scale
        cluster["enableInTreeAutoscaling"] = True
        cluster["autoscalerOptions"] = {"idleTimeoutSeconds": AUTOSCALER_IDLE_S}
    return cluster


def _group(name: str, image: str, cpus: int, low: int, high: int, extra: dict, memory_gi: int) -> dict:
    return {
        "groupName": name,
        "replicas": low,
        "minReplicas": low,
        "maxReplicas": max(low, high),
        "rayStartParams": {},
        "template": {"spec": _pod(_container("ray-worker", image, cpus, extra, memory_gi), memory_gi)},
    }


def _pod(container: dict, memory_gi: int) -> dict:
    """A Ray pod: its container and the memory-backed /dev/shm for the object store."""
    shm = f"{math.ceil(memory_gi * OBJECT_STORE_MEMORY_FRACTION)}Gi"
    container["volumeMounts"] = [{"name": "dshm", "mountPath": "/dev/shm"}]
    return {"containers": [container], "volumes": [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": shm}}]}


def _container(name: str, image: str, cpus: int, extra: dict, memory_gi: int) -> dict:
    resources = {"cpu": str(cpus), "memory": f"{memory_gi}Gi", **extra}
    return {
        "name": name,
        "image": image,
        "resources": {"requests": dict(resources), "limits": dict(resources)},
        "envFrom": [{"secretRef": {"name": STORAGE_SECRET, "optional": True}}],
    }


def _submit_cronjob(name: str, schedule: str, image: str, spec_configmap: str) -> dict:
    container = {
        "name": "submit",
        "image": image,
        "command": ["latentmill", "submit", f"{SPEC_DIR}/spec.yaml",
                    "--address", f"http://{CLUSTER_NAME}-head-svc:8265"],
        "env": [{"name": "RAY_AUTH_TOKEN",
                 "valueFrom": {"secretKeyRef": {"name": RAY_TOKEN_SECRET, "key": "token", "optional": True}}}],
        "volumeMounts": [{"name": "spec", "mountPath": SPEC_DIR, "readOnly": True}],
        "resources": {"requests": {"cpu": "100m", "memory": "512Mi"}},
    }
    pod = {"spec": {"restartPolicy": "OnFailure", "containers": [container],
                    "volumes": [{"name": "spec", "configMap": {"name": spec_configmap}}]}}
    return {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": {"name": name},
        "spec": {"schedule": schedule, "timeZone": "Etc/UTC", "concurrencyPolicy": "Forbid",
                 "jobTemplate": {"spec": {"backoffLimit": 3, "template": pod}}},
    }


def _ray(kind: str, name: str, spec: dict) -> dict:
    return {"apiVersion": "ray.io/v1", "kind": kind, "metadata": {"name": name}, "spec": spec}


def _ship_prompts(data: dict, files: dict) -> None:
    """A local prompt file goes into the ConfigMap; decoder checkpoints must be on shared storage."""
    # lazy: keeps fsspec out of processes that never call this
    from jobs.ops.submit import is_local

    prompts = data.get("prompts")
    if isinstance(prompts, dict) and isinstance(prompts.get("file"), str) and is_local(prompts["file"]):
        source = Path(prompts["file"])
        if "{date}" in prompts["file"] or not source.is_file():
            raise ConfigError("prompts.file", "", detail=f"local file {prompts['file']!r}: on Kubernetes give a dated "
                              "or missing prompt file as an object-store URL (s3://...)")
        files[source.name] = source.read_text()
        prompts["file"] = f"{SPEC_DIR}/{source.name}"
    decoder = data.get("decoder")
    if isinstance(decoder, str) and decoder.startswith(("/", ".", "~")):
        raise ConfigError("decoder", "", detail=f"{decoder!r} is a local path: on Kubernetes put the checkpoint on "
                          "object storage (s3://...) or use a registered decoder name")


def _check_schedule(schedule: str) -> None:
    fields = schedule.split()
    if not (schedule.startswith("@") or (len(fields) == 5 and all(CRON_FIELD.match(f) for f in fields))):
        raise ConfigError("", "", detail=f"--schedule {schedule!r}: expected a cron schedule of 5 fields, e.g. '0 2 * * *'")
