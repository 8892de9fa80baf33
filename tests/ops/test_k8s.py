"""KubeRay manifests against KubeRay's own CRD schemas; the container image's install steps."""

from __future__ import annotations

import copy
import re
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


def test_the_image_installs_with_the_readme_setup():
    dockerfile = Path(REPO, "infra", "docker", "Dockerfile").read_text()
    makefile = Path(REPO, "Makefile").read_text()
    readme = Path(REPO, "README.md").read_text()
    runs = re.findall(r"^RUN (.*(?:\\\n.*)*)", dockerfile, re.M)
    installs = [r for r in runs if "pip" in r or "make" in r]
    # The image's only latentmill install is `make setup`: the target the README's commands run.
    assert [r for r in installs if "pip install" in r] == []
    assert len([r for r in installs if re.search(r"\bmake setup\b", r)]) == 1
    assert "make quickstart" in readme and "make test" in readme
    assert re.search(r"^quickstart: \$\(STAMP\)", makefile, re.M) and re.search(r"^test: \$\(STAMP\)", makefile, re.M)
    assert re.search(r"^setup: \$\(STAMP\)", makefile, re.M)
    setup = _recipe(makefile, "$(STAMP)")
    assert re.search(r"^PIP_INSTALL := \$\(BIN\)/python -m pip install ", makefile, re.M)
    assert "$(PIP_INSTALL) $(TORCH_SPEC)" in setup  # unquoted: it may name torch and torchvision
    assert "$(PIP_INSTALL) -e '.[test]'" in setup
    assert "docker build -f infra/docker/Dockerfile" in " ".join(_recipe(makefile, "image"))
    # A CUDA runtime base, a non-root user, no secrets baked in.
    assert re.search(r"^FROM nvidia/cuda:\S+-runtime-", dockerfile, re.M)
    users = re.findall(r"^USER (\S+)", dockerfile, re.M)
    assert users and users[-1] not in ("root", "0")
    assert not re.search(r"^(ENV|ARG)\b.*(KEY|SECRET|TOKEN|PASSWORD)", dockerfile, re.M | re.I)
    assert ".env" in Path(REPO, ".dockerignore").read_text().split()
