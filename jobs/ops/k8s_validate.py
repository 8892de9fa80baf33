"""Validate Kubernetes manifests offline: KubeRay kinds against KubeRay's own CRD schemas.

The API server treats a CRD's schema as structural: a field the schema does not name is an error
unless the node says `x-kubernetes-preserve-unknown-fields`. JSON Schema allows unknown fields by
default, so every object node that lists `properties` is made closed here (additionalProperties:
false) before validating. Pod templates are validated as far as the CRD schema describes them;
a plain CronJob's pod template is checked against the same PodTemplateSpec schema.
"""

from __future__ import annotations

import copy
import functools
import json
from importlib import resources

import yaml

CRD_FILES = {"RayCluster": "raycluster.v1.json", "RayJob": "rayjob.v1.json", "RayCronJob": "raycronjob.v1.json"}
RAY_API_VERSION = "ray.io/v1"
# Kubernetes names: lowercase RFC 1123 subdomains (at most 253 characters).
NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
OBJECT_META = {
    "type": "object",
    "required": ["name"],
    "properties": {"name": {"type": "string", "pattern": NAME_PATTERN, "maxLength": 253},
                   "namespace": {"type": "string", "pattern": NAME_PATTERN}, "labels": STRING_MAP,
                   "annotations": STRING_MAP},
}


def strict(schema):
    """A copy of a structural schema in which unknown fields are errors, as on the API server."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    node = {k: (strict(v) if k in ("items", "additionalProperties", "allOf", "anyOf", "oneOf", "not") else v)
            for k, v in schema.items()}
    if "properties" in schema:
        node["properties"] = {name: strict(child) for name, child in schema["properties"].items()}
        if not schema.get("x-kubernetes-preserve-unknown-fields") and "additionalProperties" not in schema:
            node["additionalProperties"] = False
    return node


@functools.lru_cache(maxsize=None)
def crd_schema(kind: str) -> dict:
    """The strict schema of a KubeRay kind, with the envelope (apiVersion, kind, metadata) pinned."""
    text = resources.files("infra").joinpath("kuberay", "crds", CRD_FILES[kind]).read_text()
    schema = strict(json.loads(text)["openAPIV3Schema"])
    schema["properties"].update(apiVersion={"const": RAY_API_VERSION}, kind={"const": kind}, metadata=OBJECT_META)
    schema["required"] = sorted({*schema.get("required", []), "apiVersion", "kind", "metadata", "spec"})
    return schema


@functools.lru_cache(maxsize=None)
def pod_template_schema() -> dict:
    """PodTemplateSpec as KubeRay's CRD describes it (a RayCluster head's template)."""
    return crd_schema("RayCluster")["properties"]["spec"]["properties"]["headGroupSpec"]["properties"]["template"]


def _closed(properties: dict, required=()) -> dict:
    return {"type": "object", "properties": properties, "required": list(required), "additionalProperties": False}


def core_schema(kind: str) -> dict:
    """The two core kinds latentmill writes beside KubeRay's: ConfigMap and batch/v1 CronJob."""
    integer = {"type": "integer"}
    if kind == "ConfigMap":
        return _closed({"apiVersion": {"const": "v1"}, "kind": {"const": kind}, "metadata": OBJECT_META,
                        "data": STRING_MAP}, ("apiVersion", "kind", "metadata", "data"))
    if kind == "CronJob":
        job_spec = _closed({"backoffLimit": integer, "activeDeadlineSeconds": integer,
                            "ttlSecondsAfterFinished": integer, "template": pod_template_schema()}, ("template",))
        cron_spec = _closed({
            "schedule": {"type": "string", "minLength": 1}, "timeZone": {"type": "string"},
            "concurrencyPolicy": {"enum": ["Allow", "Forbid", "Replace"]}, "startingDeadlineSeconds": integer,
            "successfulJobsHistoryLimit": integer, "failedJobsHistoryLimit": integer, "suspend": {"type": "boolean"},
            "jobTemplate": _closed({"metadata": {"type": "object"}, "spec": job_spec}, ("spec",)),
        }, ("schedule", "jobTemplate"))
        return _closed({"apiVersion": {"const": "batch/v1"}, "kind": {"const": kind}, "metadata": OBJECT_META,
                        "spec": cron_spec}, ("apiVersion", "kind", "metadata", "spec"))
    raise KeyError(kind)


def validate_manifest(manifest, source: str = "<manifest>") -> list[str]:
    """Every schema error of one manifest, as 'source: Kind/name: field.path: problem' lines."""
    # lazy: keeps jsonschema out of processes that never call this
    import jsonschema

    if not isinstance(manifest, dict):
        return [f"{source}: expected a mapping, got {type(manifest).__name__}"]
    kind = manifest.get("kind")
    if kind in CRD_FILES:
        schema = crd_schema(kind)
    else:
        try:
            schema = core_schema(kind)
        except KeyError:
            known = ", ".join([*CRD_FILES, "ConfigMap", "CronJob"])
            return [f"{source}: kind {kind!r} is not one latentmill validates ({known})"]
    name = (manifest.get("metadata") or {}).get("name", "?")
    validator = jsonschema.Draft7Validator(schema)
    errors = sorted(validator.iter_errors(copy.deepcopy(manifest)), key=lambda e: list(e.absolute_path))
    return [f"{source}: {kind}/{name}: {_path(e.absolute_path) or '(top)'}: {e.message}" for e in errors]


def validate_file(path: str) -> list[str]:
    """Errors of every YAML document in a file."""
    with open(path) as f:
        documents = [d for d in yaml.safe_load_all(f) if d is not None]
    if not documents:
        return [f"{path}: no manifest in the file"]
    return [error for i, doc in enumerate(documents) for error in validate_manifest(doc, f"{path}[{i}]")]


def _path(parts) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else (f".{p}" if i else str(p)) for i, p in enumerate(parts))
