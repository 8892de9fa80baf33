"""Training data from latentmill outputs with latents: the split, each worker's shards, streamed batches.

The driver scans only manifests (keys and status per shard), never the tars: `scan` gives per shard
its tar URL and its training and held-out keys. Each worker then streams its own shards, one tar at
a time, through a shuffle buffer of encoded samples, so nothing holds a full copy. An epoch shuffles
the shards (from the spec's seed) and deals them out by rank, so workers read disjoint parts; a
worker's position is the number of samples it has taken, which makes the stream after a resume
exactly the stream an uninterrupted run reads.
"""

from __future__ import annotations

import io
import math
import random
import tarfile
from dataclasses import dataclass

import fsspec
import numpy as np
import torch
from PIL import Image

from pipelines.errors import ConfigError
from pipelines.plan import key_fraction
from pipelines.sinks.layout import OutputLayout
from pipelines.sinks.storage import storage_options
from pipelines.tables import table_from_bytes

IMAGE_SUFFIXES = ("png", "jpg", "jpeg", "webp")
LATENT_SUFFIX = "latent.npy"


@dataclass(frozen=True)
class Shard:
    tar_url: str
    train_keys: tuple[str, ...]
    held_out_keys: tuple[str, ...]


def shards_from(items: list[dict]) -> list[Shard]:
    """Shards back from their dicts (how they travel to workers in the train loop config)."""
    return [Shard(item["tar_url"], tuple(item["train_keys"]), tuple(item["held_out_keys"])) for item in items]


def is_held_out(key: str, fraction: float, seed: int) -> bool:
    return key_fraction(key, seed) < fraction


def scan(urls: list[str], storage, fraction: float, seed: int) -> list[Shard]:
    """The committed shards of every URL with their keys split into training and held-out."""
    shards = []
    for url in urls:
        layout = OutputLayout(url, storage)
        index = layout.read_index()
        if not index["shards"]:
            raise ConfigError("data.urls", "", detail=f"{url}: no committed shards (is it a latentmill output? "
                              "index.json lists none)")
        for entry in index["shards"]:
            rows = table_from_bytes(layout.fs.cat_file(layout.path(entry["manifest"])), ["key", "status"]).to_pylist()
            keys = [r["key"] for r in rows if r["status"] == "ok"]
            held = tuple(k for k in keys if is_held_out(k, fraction, seed))
            train = tuple(k for k in keys if not is_held_out(k, fraction, seed))
            shards.append(Shard(f"{url.rstrip('/')}/{entry['tar']}", train, held))
    return shards


def read_raw(tar_url: str, keys, options: dict):
    """(key, {suffix: bytes}) of the wanted keys in tar order, streaming the tar; nothing decoded."""
    wanted = set(keys)
    current, parts = None, {}
    with fsspec.open(tar_url, "rb", **options) as stream, tarfile.open(fileobj=stream, mode="r|*") as tar:
        for member in tar:
            if not member.isfile():
                continue
            name = member.name.rsplit("/", 1)[-1]
            key, _, suffix = name.partition(".")
            if key != current:
                if current in wanted:
                    yield current, parts
                current, parts = key, {}
            if key in wanted and (suffix == LATENT_SUFFIX or suffix in IMAGE_SUFFIXES or suffix == "json"):
                parts[suffix] = tar.extractfile(member).read()
        if current in wanted:
            yield current, parts


def read_samples(tar_url: str, keys, options: dict, images: bool = True):
    """(key, latents float32 (C, h, w), image uint8 (H, W, 3)) for the wanted keys, streaming the tar
    (images=False: image None, not decoded)."""
    for key, parts in read_raw(tar_url, keys, options):
        yield (key, *decode_sample(tar_url, key, parts, images))


def decode_sample(tar_url: str, key: str, parts: dict, images: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    if LATENT_SUFFIX not in parts:
        raise ConfigError("data.urls", "", detail=f"{tar_url}: sample {key} has no {key}.{LATENT_SUFFIX}; training "
                          "needs latents (kind: encode, or generate with output.save_latents: true)")
    latents = np.load(io.BytesIO(parts[LATENT_SUFFIX]), allow_pickle=False).astype(np.float32)
    if not images:
        return latents, None
    image = next((parts[s] for s in IMAGE_SUFFIXES if s in parts), None)
    if image is None:
        raise ConfigError("data.urls", "", detail=f"{tar_url}: sample {key} has no image ({', '.join(IMAGE_SUFFIXES)})")
    return latents, np.asarray(Image.open(io.BytesIO(image)).convert("RGB"))


def latent_statistics(shards: list[Shard], storage, limit: int = 256) -> tuple[float, float]:
    """Mean and standard deviation of the latents of up to `limit` training samples (latents only:
    no image is decoded)."""
    values, taken = [], 0
    for shard in shards:
        keys = shard.train_keys[:limit - taken]
        if keys:
            values += [z for _, z, _ in read_samples(shard.tar_url, keys, storage_options(shard.tar_url, storage), images=False)]
            taken += len(keys)
        if taken >= limit:
            break
    stacked = np.stack(values).astype(np.float64)
    return float(stacked.mean()), float(stacked.std())


def normalising_scaling(mean: float, std: float) -> dict:
    """A decoder's scaling_factor and shift_factor that bring latents of this mean and standard
    deviation to mean 0, std 1 at its first layer (Decoder.to_decoder_space divides by the one and
    adds the other)."""
    return {"scaling_factor": float(f"{std:.6g}"), "shift_factor": float(f"{-mean / std:.6g}")}


def first_sample(shards: list[Shard], storage) -> tuple[str, np.ndarray, np.ndarray]:
    """(key, latents, image) of the first training sample, to check the data before training."""
    shard = next((s for s in shards if s.train_keys), None)
    if shard is None:
        raise ConfigError("data", "", detail="the training split is empty (every sample is held out)")
    options = storage_options(shard.tar_url, storage)
    return next(iter(read_samples(shard.tar_url, shard.train_keys[:1], options)))


def units(shards: list[Shard], world: int) -> list[tuple[str, tuple[str, ...]]]:
    """Pieces of work dealt to workers: whole shards, or interleaved parts of shards when there are
    fewer shards than workers (so every worker gets data)."""
    parts = max(1, math.ceil(world / max(1, len(shards))))
    return [(s.tar_url, s.train_keys[p::parts]) for s in shards for p in range(parts) if s.train_keys[p::parts]]


def worker_stream(work, rank: int, world: int, seed: int, start: int, storage, crop: int | None,
                  shuffle_buffer: int = 1):
    """Endless (latents, image) tensors of this rank, skipping the first `start` samples it took.

    Each epoch deals the shuffled work out by rank; samples pass through a shuffle buffer seeded by
    (seed, epoch, rank). The stream is a pure function of those, so a resumed worker that skips
    `start` samples (read, not decoded) continues exactly where the uninterrupted one was.
    """
    options = storage_options(work[0][0], storage) if work else {}
    epoch = 0
    while True:
        mine = epoch_share(work, rank, world, seed, epoch)
        count = sum(len(keys) for _, keys in mine)
        if count == 0:
            raise RuntimeError(f"worker {rank} has no training samples")
        if start >= count:  # a whole epoch already taken before a resume
            start -= count
            epoch += 1
            continue
        raw = ((tar_url, key, parts) for tar_url, keys in mine for key, parts in read_raw(tar_url, keys, options))
        for i, (tar_url, key, parts) in enumerate(shuffled(raw, shuffle_buffer, random.Random(f"{seed}:{epoch}:{rank}"))):
            if i >= start:
                yield random_crop(*decode_sample(tar_url, key, parts), crop, f"{seed}:{epoch}:{key}")
        start = 0
        epoch += 1


def epoch_share(work, rank: int, world: int, seed: int, epoch: int) -> list[tuple[str, tuple[str, ...]]]:
    """The units of work `rank` reads in `epoch`: all units shuffled by (seed, epoch), dealt by rank."""
    order = list(range(len(work)))
    random.Random(seed * 100003 + epoch).shuffle(order)
    return [work[i] for i in order[rank::world]]


def shuffled(items, size: int, rng: random.Random):
    """Items in random order, holding at most `size` at a time (webdataset's shuffle buffer)."""
    buffer = []
    for item in items:
        buffer.append(item)
        if len(buffer) >= size:
            i = rng.randrange(len(buffer))
            buffer[i], buffer[-1] = buffer[-1], buffer[i]
            yield buffer.pop()
    rng.shuffle(buffer)
    yield from buffer


def random_crop(latents: np.ndarray, image: np.ndarray, crop: int | None, salt: str):
    """A crop of `crop` latent cells and the matching pixels; deterministic per (seed, epoch, key)."""
    z = torch.from_numpy(np.array(latents))
    x = torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255.0
    if crop is None:
        return z, x
    h, w = z.shape[-2:]
    factor = x.shape[-1] // w
    rng = random.Random(salt)
    top, left = rng.randint(0, h - crop), rng.randint(0, w - crop)
    z = z[:, top:top + crop, left:left + crop]
    x = x[:, top * factor:(top + crop) * factor, left * factor:(left + crop) * factor]
    return z, x


def batches(stream, batch_size: int):
    while True:
        items = [next(stream) for _ in range(batch_size)]
        yield torch.stack([z for z, _ in items]), torch.stack([x for _, x in items])


def held_out_samples(shards: list[Shard], storage, limit: int):
    """Up to `limit` held-out (key, latents, image), in shard order."""
    taken = 0
    for shard in shards:
        if taken >= limit or not shard.held_out_keys:
            continue
        for key, latents, image in read_samples(shard.tar_url, shard.held_out_keys, storage_options(shard.tar_url, storage)):
            yield key, latents, image
            taken += 1
            if taken >= limit:
                return
