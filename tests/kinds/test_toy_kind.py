"""A kind is one file plus its stage classes: a toy kind registered from a test module runs end to
end (spec loader, dry-run, the engine on the shared Ray, verify) with no change anywhere else."""

from __future__ import annotations

import json
import tarfile

import pyarrow.parquet as pq
import pytest
import yaml

from jobs import kinds
from jobs.dry_run import describe
from jobs.local import run_job
from jobs.spec import parse_spec
from pipelines.errors import ConfigError
from pipelines.faults import Fault
from pipelines.verify import verify_output
from tests.support import toy_kind


@pytest.fixture
def toy_registered():
    kinds.register(toy_kind.KIND)
    yield toy_kind.KIND
    kinds.KINDS.pop(toy_kind.KIND.name)


def toy_spec(out, **fields):
    data = {"name": "toy", "kind": "toy-squares", "count": 10, "power": 2,
            "output": {"url": str(out), "samples_per_shard": 4}, **fields}
    return parse_spec(yaml.safe_dump(data), source="toy.yaml")


def test_unregistered_kind_is_a_spec_error(tmp_path):
    with pytest.raises(ConfigError, match="kind.*'toy-squares'"):
        toy_spec(tmp_path / "out")


def test_toy_kind_dry_run(toy_registered, tmp_path):
    text = describe(toy_spec(tmp_path / "out"))
    assert "job 'toy' (toy-squares)" in text
    assert "squares of 0..9" in text
    assert "shards: 3 of up to 4 samples (00000..00002, txt)" in text
    assert [line.split()[0] for line in text.splitlines()[-4:]] == ["count", "square", "render", "write"]


def test_toy_kind_runs_end_to_end(toy_registered, ray_cluster, tmp_path):
    out = tmp_path / "out"
    spec = toy_spec(out, power=3)
    assert isinstance(spec, toy_kind.ToySpec)
    report = run_job(spec, progress=False)
    assert report["generated"] == 10 and report["failed"] == 0
    values, fields = {}, {}
    for tar in sorted((out / "shards").glob("*.tar")):
        with tarfile.open(tar) as t:
            for member in t.getmembers():
                key, _, ext = member.name.partition(".")
                if ext == "square.txt":
                    values[key] = int(t.extractfile(member).read())
                if ext == "json":
                    fields[key] = json.loads(t.extractfile(member).read())["value"]
    expected = {f"{i:09d}": i**3 for i in range(10)}
    assert values == expected and fields == expected
    rows = [row for m in sorted((out / "shards").glob("*.parquet")) for row in pq.read_table(m).to_pylist()]
    assert sorted(row["value"] for row in rows) == sorted(i**3 for i in range(10))
    assert verify_output(str(out))["ok"]


def test_faults_reach_any_stage_a_kind_names(toy_registered, ray_cluster, tmp_path):
    """--inject-fault takes the kind's own stage names (the engine keeps no list of them)."""
    out = tmp_path / "out"
    report = run_job(toy_spec(out), progress=False, faults=(Fault.parse("square:raise:000000003"),))
    assert report["generated"] == 9 and report["failed"] == 1
    rows = [row for m in sorted((out / "shards").glob("*.parquet")) for row in pq.read_table(m).to_pylist()]
    failed = [row for row in rows if row["status"] == "failed"]
    assert [(row["key"], row["failed_stage"]) for row in failed] == [("000000003", "square")]
    with pytest.raises(ConfigError, match="no stage 'denoise'"):
        run_job(toy_spec(tmp_path / "other"), progress=False, faults=(Fault.parse("denoise:raise:000000003"),))
