"""Read a job output back: the committed shards' URLs, as a webdataset pipeline or a Ray Dataset.

Loaders start from index.json and never list the bucket. Any fsspec URL works, S3 included
(webdataset 1.0 has no S3 opener of its own, so shards are opened through fsspec here).
"""

from __future__ import annotations

import fsspec
from pyarrow.fs import FSSpecHandler, PyFileSystem

from pipelines.config import StorageConfig
from pipelines.sinks.layout import OutputLayout
from pipelines.sinks.storage import storage_options


def shard_urls(url: str, storage: StorageConfig | None = None) -> list[str]:
    return OutputLayout(url, storage).tar_urls()


def webdataset(url: str, storage: StorageConfig | None = None):
    """A webdataset pipeline of the committed samples (dicts of raw bytes), in shard order.

    Add decoding as usual, e.g. `webdataset(url).compose(wds.decode("pil"))`.
    """
    # lazy: keeps webdataset out of processes that never call this
    import webdataset as wds

    options = storage_options(url, storage)

    def open_with_fsspec(shards):
        for shard in shards:
            with fsspec.open(shard["url"], "rb", **options) as stream:
                yield {**shard, "stream": stream}

    # lazy: keeps webdataset out of processes that never call this
    from webdataset.tariterators import group_by_keys, tar_file_expander

    return wds.DataPipeline(wds.SimpleShardList(shard_urls(url, storage)), open_with_fsspec, tar_file_expander, group_by_keys)


def ray_dataset(url: str, storage: StorageConfig | None = None, **read_options):
    """`ray.data.read_webdataset` over the committed shards, through an fsspec filesystem."""
    # lazy: keeps ray out of processes that never call this
    import ray

    paths = [fsspec.core.split_protocol(u)[1] for u in shard_urls(url, storage)]
    return ray.data.read_webdataset(paths, filesystem=PyFileSystem(StorageHandler(url, storage)), **read_options)


class StorageHandler(FSSpecHandler):
    """An fsspec filesystem for pyarrow that travels to Ray tasks as (url, storage config): each
    process opens the storage itself, reading the keys from the environment variables the config
    names, so no key or secret is ever pickled (an s3fs instance would carry both)."""

    def __init__(self, url: str, storage: StorageConfig | None = None):
        self.url, self.storage = url, storage
        super().__init__(fsspec.core.url_to_fs(url, **storage_options(url, storage))[0])

    def __reduce__(self):
        return type(self), (self.url, self.storage)
