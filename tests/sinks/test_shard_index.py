"""The driver's shard index: what index.json lists, and that it is rewritten on a timer, not per commit."""

from __future__ import annotations

from pipelines.plan import shard_name
from pipelines.sinks.layout import OutputLayout
from pipelines.sinks.shard_index import ShardIndex


def test_index_json_lists_committed_shards_with_their_repair_revisions(tmp_path):
    layout = OutputLayout(str(tmp_path))
    index = ShardIndex(5)
    index.add("00003", {"samples": 8, "failed": 1, "revision": 2})
    index.add("00000", {"samples": 7})  # markers from before revisions name none
    index.write(layout)
    assert layout.read_index() == {"format_version": 1, "samples": 15, "failed": 1, "shards": [
        {"name": "00000", "tar": "shards/00000.tar", "manifest": "shards/00000.parquet", "samples": 7, "failed": 0},
        {"name": "00003", "tar": "shards/00003.r2.tar", "manifest": "shards/00003.r2.parquet", "samples": 8,
         "failed": 1},
    ]}
    assert (index.committed, index.committed_samples) == (2, 15)
    assert layout.tar_urls() == [f"{tmp_path}/shards/00000.tar", f"{tmp_path}/shards/00003.r2.tar"]


def test_index_json_is_rewritten_on_a_timer_and_on_demand(tmp_path):
    layout = OutputLayout(str(tmp_path))
    index = ShardIndex(100, interval_s=3600)
    for i in range(100):
        index.add(shard_name(i), {"samples": 4})
        index.write_if_due(layout)
    assert index.writes == 1 and len(layout.read_index()["shards"]) == 1  # the first commit, then not due
    index.write(layout)  # the end of a run
    assert index.writes == 2 and layout.read_index()["samples"] == 400
    empty = ShardIndex(3)
    empty.write(layout)
    assert layout.read_index() == {"format_version": 1, "samples": 0, "failed": 0, "shards": []}
