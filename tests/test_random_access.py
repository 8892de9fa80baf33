"""Random access by key: byte spans in the manifests, the wids index, `latentmill get`."""

from __future__ import annotations

import tarfile

import pytest
import yaml
from fsspec.implementations.local import LocalFileSystem

from jobs.cli import main
from jobs.local import run_job
from jobs.spec import parse_spec
from pipelines.sample_access import manifest_row, read_files
from pipelines.sinks.layout import OutputLayout
from pipelines.sinks.storage import read_table
from pipelines.sinks.tar_offsets import file_spans
from tests.support.jobspecs import spec_dict


@pytest.fixture(scope="module")
def output(ray_cluster, tmp_path_factory):
    """A quickstart-like output: the tiny SDXL, 3 prompts, 3 shards, png."""
    out = tmp_path_factory.mktemp("random-access") / "out"
    run_job(parse_spec(yaml.safe_dump(spec_dict(out)), source="test.yaml"), progress=False)
    return out


def tar_members(path) -> dict[str, tuple[int, int, bytes]]:
    with tarfile.open(path) as tar:
        return {m.name: (m.offset_data, m.size, tar.extractfile(m).read()) for m in tar.getmembers()}


def test_manifests_record_every_files_offset_and_size_in_the_tar(output):
    layout = OutputLayout(str(output))
    shards = layout.read_index()["shards"]
    assert len(shards) == 3
    for shard in shards:
        members = tar_members(layout.path(shard["tar"]))
        recorded = {}
        for row in read_table(layout.fs, layout.path(shard["manifest"])).to_pylist():
            recorded.update({f"{row['key']}.{ext}": span for ext, span in file_spans(row).items()})
        assert recorded == {name: (offset, size) for name, (offset, size, _) in members.items()}
        assert {name.split(".", 1)[1] for name in recorded} == {"png", "txt", "json"}


def test_wids_reads_every_sample_with_the_same_bytes_as_the_tar(output):
    import wids

    layout = OutputLayout(str(output))
    expected = {}
    for shard in layout.read_index()["shards"]:
        for name, (_, _, data) in tar_members(layout.path(shard["tar"])).items():
            key, ext = name.split(".", 1)
            expected.setdefault(key, {})[f".{ext}"] = data
    # localname=str: read the tars where they are instead of copying them to wids' cache folder.
    dataset = wids.ShardListDataset(str(output / "wids.json"), localname=str, transformations=[])
    assert len(dataset) == len(expected) == 24
    got = {}
    for i in range(len(dataset)):
        sample = dataset[i]
        got[sample["__key__"]] = {k: v.read() for k, v in sample.items() if not k.startswith("__")}
    assert got == expected


class CountingLocalFileSystem(LocalFileSystem):
    """The real local filesystem, counting what reads a tar: whole-file opens and range reads."""

    cachable = False  # a fresh instance with fresh counters, not fsspec's cached LocalFileSystem

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.tar_reads = []

    def cat_file(self, path, start=None, end=None, **kwargs):
        if str(path).endswith(".tar"):
            self.tar_reads.append((start, end))
        return super().cat_file(path, start, end, **kwargs)

    def _open(self, path, mode="rb", **kwargs):
        if str(path).endswith(".tar") and "r" in mode and not self.tar_reads:
            self.tar_reads.append(("open", None))  # an open that no cat_file asked for
        return super()._open(path, mode, **kwargs)


def test_one_sample_is_one_range_read_per_file(output):
    layout = OutputLayout(str(output))
    counting = layout.fs = CountingLocalFileSystem()
    row = manifest_row(layout, "000000013")
    files = read_files(layout, row)
    members = tar_members(row["tar_path"])
    assert files == {name.split(".", 1)[1]: data for name, (_, _, data) in members.items() if name.startswith("000000013.")}
    assert len(counting.tar_reads) == 3 and all(start is not None for start, _ in counting.tar_reads)
    assert sum(end - start for start, end in counting.tar_reads) == sum(len(d) for d in files.values())


def test_get_writes_the_samples_files_and_refuses_an_unknown_key(output, tmp_path, capsys):
    assert main(["get", str(output), "000000005", "--out", str(tmp_path / "got")]) == 0
    assert sorted(p.name for p in (tmp_path / "got").iterdir()) == ["000000005.json", "000000005.png", "000000005.txt"]
    assert (tmp_path / "got" / "000000005.txt").read_text() == "a blue whale"
    capsys.readouterr()
    assert main(["get", str(output), "nope"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {output}: no sample has the key 'nope' (plan.parquet lists every planned key)"]
    assert main(["get", str(output.parent), "000000005"]) == 2  # not an output
    assert "is not a latentmill job output" in capsys.readouterr().err


def test_a_repaired_shard_records_the_spans_of_its_new_tar(tmp_path):
    """A repair rewrites the tar with the old samples copied and the failed one produced: the spans
    are those of the new tar (the real writer, called as a write task is, without Ray)."""
    from pipelines.sinks.webdataset_writer import write_shard
    from pipelines.stages.synthetic import tiny_png

    samples = [{"key": f"{i:09d}", "index": i, "prompt": f"prompt {i}", "seed": i} for i in range(4)]

    def batch(indices):
        return {"keys": [samples[i]["key"] for i in indices], "files": [{"png": tiny_png(i, 8 + 4 * i)} for i in indices],
                "fields": [{"height": 8, "width": 8}] * len(indices), "timings": {"decode": 0.0}}

    failed = [{"key": samples[1]["key"], "error": "boom", "stage": "decode", "attempts": 3}]
    first = write_shard(str(tmp_path), None, "00000", samples, {"job": "t"}, failed, None, (), batch([0, 2, 3]))
    repaired = write_shard(str(tmp_path), None, "00000", samples, {"job": "t"}, [], first, (), batch([1]))
    assert repaired["tar"] == "00000.r1.tar" and repaired["failed"] == 0
    members = tar_members(tmp_path / "shards" / "00000.r1.tar")
    rows = read_table(OutputLayout(str(tmp_path)).fs, str(tmp_path / "shards" / "00000.r1.parquet")).to_pylist()
    recorded = {f"{row['key']}.{ext}": span for row in rows for ext, span in file_spans(row).items()}
    assert recorded == {name: (offset, size) for name, (offset, size, _) in members.items()} and len(recorded) == 12
