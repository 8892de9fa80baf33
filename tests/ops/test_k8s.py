"""KubeRay manifests against KubeRay's own CRD schemas; the container image's install steps."""

from __future__ import annotations

import copy
import re
import sys
from pathlib import Path

import pytest
import yaml

from jobs.cli import main as cli_main
from jobs.ops.k8s import render
from jobs.ops.k8s_validate import validate_file, validate_manifest
from tests.conftest import REPO
from tests.support.jobspecs import write_spec

KUBERAY = Path(REPO, "infra", "kuberay")
NIGHTLY = f"{REPO}/jobs/examples/nightly.yaml"
COMMITTED = sorted(KUBERAY.glob("*.yaml"))


def test_the_committed_manifests_are_all_there():
    assert {p.name for p in COMMITTED} == {"configmap.yaml", "raycluster.yaml", "rayjob.yaml", "raycronjob.yaml",
                                           "cronjob.yaml"}


@pytest.mark.parametrize("path", COMMITTED, ids=lambda p: p.name)
def test_committed_manifests_validate(path):
    assert validate_file(str(path)) == []


def test_committed_manifests_are_what_render_writes(tmp_path):
    """infra/kuberay is the renderer's output for the nightly example: it cannot drift from it."""
    first_line = COMMITTED[0].read_text().splitlines()[0]
    command = re.search(r"`latentmill (k8s render .*)`", first_line).group(1)
    args = [a.strip("'") for a in re.findall(r"'[^']*'|\S+", command)]
    assert cli_main([*args, "--out", str(tmp_path)]) == 0
    for path in COMMITTED:
        assert (tmp_path / path.name).read_text() == path.read_text(), path.name


def test_rendered_manifests_validate_and_map_stages_to_groups(tmp_path):
    spec = write_spec(tmp_path / "gpu.yaml", "s3://bucket/gpu-job", name="GPU job",
                      stages__denoise={"num_gpus": 1, "num_cpus": 4, "concurrency": {"min": 2, "max": 6}, "batch_size": 8},
                      stages__decode={"num_gpus": 0.5, "num_cpus": 2, "concurrency": 2, "batch_size": 4},
                      stages__write={"num_cpus": 1, "concurrency": 8})
    manifests = render(spec, "registry.example/latentmill:1", schedule="30 1 * * *")
    assert set(manifests) == {"configmap.yaml", "raycluster.yaml", "rayjob.yaml", "raycronjob.yaml", "cronjob.yaml"}
    for name, manifest in manifests.items():
        assert validate_manifest(manifest, name) == []
    job = manifests["rayjob.yaml"]["spec"]
    assert job["shutdownAfterJobFinishes"] is True and job["ttlSecondsAfterFinished"] > 0 and job["backoffLimit"] >= 1
    assert job["entrypoint"] == "latentmill run /etc/latentmill/spec.yaml"
    groups = {g["groupName"]: g for g in job["rayClusterSpec"]["workerGroupSpecs"]}
    gpu = groups["gpu"]
    limits = gpu["template"]["spec"]["containers"][0]["resources"]["limits"]
    # One GPU per pod (the largest GPU ask); 2 denoise + 2 x 0.5 decode GPUs at least, 6 + 1 at most.
    assert limits["nvidia.com/gpu"] == "1" and limits["cpu"] == "5"
    assert (gpu["minReplicas"], gpu["maxReplicas"]) == (3, 7)
    cpu = groups["cpu"]  # 8 concurrent writes of 1 CPU in 4-CPU pods
    assert (cpu["minReplicas"], cpu["maxReplicas"]) == (2, 2)
    assert "nvidia.com/gpu" not in cpu["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert manifests["raycronjob.yaml"]["spec"]["schedule"] == "30 1 * * *"
    assert manifests["raycronjob.yaml"]["spec"]["jobTemplate"] == job
    shipped = yaml.safe_load(manifests["configmap.yaml"]["data"]["spec.yaml"])
    assert shipped["name"] == "GPU job" and shipped["output"]["url"] == "s3://bucket/gpu-job"


def _pods(cluster: dict) -> list[dict]:
    return [cluster["headGroupSpec"]["template"]["spec"]] + [g["template"]["spec"] for g in cluster["workerGroupSpecs"]]


@pytest.mark.parametrize("denoise_actors", [{"min": 2, "max": 6}, 2])
def test_clusters_go_after_their_job_have_shm_for_the_object_store_and_autoscale_when_they_can(tmp_path, denoise_actors):
    spec = write_spec(tmp_path / "gpu.yaml", "s3://bucket/gpu-job",
                      stages__denoise={"num_gpus": 1, "num_cpus": 4, "concurrency": denoise_actors, "batch_size": 8},
                      stages__decode={"num_gpus": 1, "num_cpus": 2, "concurrency": 2, "batch_size": 4})
    manifests = render(spec, "img:1", schedule="0 2 * * *")
    job = manifests["rayjob.yaml"]["spec"]
    # GPU pods must not idle for an hour after a run.
    assert job["shutdownAfterJobFinishes"] is True and 0 < job["ttlSecondsAfterFinished"] <= 300
    for cluster in (job["rayClusterSpec"], manifests["raycluster.yaml"]["spec"]):
        for pod in _pods(cluster):
            shm = [v for v in pod["volumes"] if v.get("emptyDir", {}).get("medium") == "Memory"]
            assert len(shm) == 1 and {"name": shm[0]["name"], "mountPath": "/dev/shm"} in \
                pod["containers"][0]["volumeMounts"], pod
        scalable = any(g["maxReplicas"] > g["minReplicas"] for g in cluster["workerGroupSpecs"])
        assert scalable == isinstance(denoise_actors, dict)
        assert cluster.get("enableInTreeAutoscaling", False) is scalable
        if scalable:
            assert 0 < cluster["autoscalerOptions"]["idleTimeoutSeconds"] <= 300
    for name, manifest in manifests.items():
        assert validate_manifest(manifest, name) == []


def test_the_k8s_render_command_in_the_nightly_examples_header_works_as_written(tmp_path):
    header = [line.lstrip("# ").strip() for line in Path(NIGHTLY).read_text().splitlines() if line.startswith("#")]
    command = next(line for line in header if line.startswith("latentmill k8s render"))
    args = [a.strip("'") for a in re.findall(r"'[^']*'|\S+", command)][1:]
    args = [a.replace("jobs/examples/nightly.yaml", NIGHTLY).replace("IMAGE", "registry.example/latentmill:1")
            for a in args]
    assert cli_main([*args, "--out", str(tmp_path)]) == 0
    assert (tmp_path / "raycronjob.yaml").exists()


def test_a_local_prompt_file_travels_in_the_configmap(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("one\ntwo\n")
    spec = write_spec(tmp_path / "s.yaml", "s3://bucket/x", prompts={"file": str(prompts)})
    manifests = render(spec, "img:1")
    data = manifests["configmap.yaml"]["data"]
    assert data["prompts.txt"] == "one\ntwo\n"
    assert yaml.safe_load(data["spec.yaml"])["prompts"]["file"] == "/etc/latentmill/prompts.txt"
    assert "raycronjob.yaml" not in manifests  # no --schedule


@pytest.mark.parametrize(
    "kind_file, mutate, expected",
    [
        ("rayjob.yaml", lambda m: m["spec"].update(shutdownAfterJobFinish=True), "'shutdownAfterJobFinish' was unexpected"),
        ("raycluster.yaml", lambda m: m["spec"]["workerGroupSpecs"][0].update(minReplica=1), "'minReplica' was unexpected"),
        ("rayjob.yaml", lambda m: m["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
         .update(imagePullPolice="Always"), "'imagePullPolice' was unexpected"),
        ("raycronjob.yaml", lambda m: m["spec"].pop("schedule"), "'schedule' is a required property"),
        ("raycluster.yaml", lambda m: m["spec"]["workerGroupSpecs"][0].update(maxReplicas="many"), "'many' is not of type"),
        ("cronjob.yaml", lambda m: m["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
         .update(comand=["x"]), "'comand' was unexpected"),
        ("rayjob.yaml", lambda m: m.update(apiVersion="ray.io/v1alpha2"), "'ray.io/v1' was expected"),
        ("configmap.yaml", lambda m: m["metadata"].update(name="Not_A_Name"), "does not match"),
    ],
)
def test_a_typo_is_rejected(kind_file, mutate, expected):
    manifest = copy.deepcopy(yaml.safe_load((KUBERAY / kind_file).read_text()))
    assert validate_manifest(manifest) == []
    mutate(manifest)
    errors = validate_manifest(manifest)
    assert errors and any(expected in e for e in errors), errors


def test_render_refuses_what_cannot_run_on_kubernetes(tmp_path, capsys):
    spec = write_spec(tmp_path / "s.yaml", "relative/out")
    assert cli_main(["k8s", "render", spec, "--image", "img:1", "--out", str(tmp_path / "k")]) == 2
    assert "relative path" in capsys.readouterr().err
    spec = write_spec(tmp_path / "s.yaml", "s3://b/x")
    assert cli_main(["k8s", "render", spec, "--image", "img:1", "--schedule", "every night", "--out",
                     str(tmp_path / "k")]) == 2
    assert "--schedule 'every night'" in capsys.readouterr().err
    assert not (tmp_path / "k").exists()


# -- the container image ----------------------------------------------------------------------------


def _recipe(makefile: str, target: str) -> list[str]:
    block = re.search(rf"^{re.escape(target)}:.*\n((?:\t.*\n)+)", makefile, re.M).group(1)
    return [line.strip() for line in block.splitlines()]


def _instructions(dockerfile: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n\s*", " ", "\n".join(line for line in dockerfile.splitlines() if not line.lstrip().startswith("#")))
    return [(m.group(1), m.group(2)) for m in re.finditer(r"^(\w+)\s+(.*)$", text, re.M)]


def test_the_image_installs_dependencies_first_and_latentmill_as_a_package_on_the_tests_python():
    dockerfile = Path(REPO, "infra", "docker", "Dockerfile").read_text()
    makefile = Path(REPO, "Makefile").read_text()
    steps = _instructions(dockerfile)
    runs = [args for op, args in steps if op == "RUN"]
    # Dependencies in layers before the source: a source edit must not reinstall torch.
    source_copy = next(i for i, (op, args) in enumerate(steps) if op == "COPY" and re.search(r"(^|\s)\.\s+\S+$", args))
    torch_install = next(i for i, (op, args) in enumerate(steps) if op == "RUN" and "TORCH_SPEC" in args)
    deps_install = next(i for i, (op, args) in enumerate(steps) if op == "RUN" and "requirements.txt" in args)
    assert torch_install < deps_install < source_copy
    assert [args for op, args in steps[:source_copy] if op == "COPY" and "pyproject.toml" in args], \
        "the dependency layer sees pyproject.toml alone"
    assert "'dependencies'" in steps[deps_install][1] and "optional-dependencies" not in steps[deps_install][1]
    # latentmill itself: a regular install without its dependencies (no -e, no test extras, no make setup).
    installs = [r for r in runs if "pip install" in r]
    assert not [r for r in installs if re.search(r"(\s-e\s|--editable|\[test\])", r)], installs
    assert any(re.search(r"pip install .*--no-deps \.(\s|$)", r) for r in installs[-1:]), installs
    assert not [r for r in runs if re.search(r"\bmake\b", r)]
    # The Python the tests run on (major.minor); uid 1000 is free on ubuntu24.04 (its `ubuntu` user goes).
    version = re.search(r"^ARG PYTHON_VERSION=(\S+)", dockerfile, re.M).group(1)
    assert version == f"{sys.version_info.major}.{sys.version_info.minor}", (version, sys.version)
    assert re.search(r"^FROM nvidia/cuda:\S+-ubuntu24\.04", dockerfile, re.M)
    user_add = next(r for r in runs if "useradd" in r)
    assert "--uid 1000" in user_add and re.search(r"userdel (--remove )?ubuntu.*useradd", user_add)
    assert "python3 " not in " ".join(r for r in runs if "apt-get install" in r)  # not the base's 3.12
    assert "docker build -f infra/docker/Dockerfile" in " ".join(_recipe(makefile, "image"))
    # A CUDA runtime base, a non-root user, no secrets baked in.
    assert re.search(r"^FROM nvidia/cuda:\S+-runtime-", dockerfile, re.M)
    users = re.findall(r"^USER (\S+)", dockerfile, re.M)
    assert users and users[-1] not in ("root", "0")
    assert not re.search(r"^(ENV|ARG)\b.*(KEY|SECRET|TOKEN|PASSWORD)", dockerfile, re.M | re.I)
    assert ".env" in Path(REPO, ".dockerignore").read_text().split()
