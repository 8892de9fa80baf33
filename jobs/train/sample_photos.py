"""Random crops of scikit-image's sample photographs, as a folder of PNGs for `kind: encode`.

    python -m jobs.train.sample_photos ./photos/train --count 512 --size 64
    python -m jobs.train.sample_photos ./photos/test --count 64 --size 64 --photos coffee,chelsea

The photos ship inside the scikit-image package (no download). Different photos for training and
testing give a held-out set of unseen images. The defaults use only photos whose licence
scikit-image states as permissive (LICENCES, from its docstrings); the Middlebury stereo pair
(`motorcycle_left`/`_right`) states none and is used only when named.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
from PIL import Image

# Colour images of skimage.data and their licences as its docstrings state them (`cat` is
# `chelsea`: keep them on the same side of a split; colorwheel and logo are drawings).
LICENCES = {
    "astronaut": "NASA, public domain", "coffee": "CC0 (Rachel Michetti)", "chelsea": "CC0 (Stefan van der Walt)",
    "rocket": "SpaceX, public domain", "immunohistochemistry": "no known copyright restrictions",
    "hubble_deep_field": "NASA, public domain", "retina": "CC0 1.0 (Wikimedia Commons)",
    "colorwheel": "none stated (scikit-image's own drawing)", "logo": "none stated (scikit-image's logo)",
    "cat": "CC0 (Stefan van der Walt)",
    "motorcycle_left": "none stated (Middlebury 2014 stereo; opt-in only)",
    "motorcycle_right": "none stated (Middlebury 2014 stereo; opt-in only)",
}
PHOTOS = tuple(LICENCES)
# Training photos by default: colour photographs with a permissive licence, none of the held-out
# ones (coffee and chelsea, the docs' test photos).
TRAIN_PHOTOS = ("astronaut", "rocket", "immunohistochemistry", "hubble_deep_field", "retina")


def load_photo(name: str) -> np.ndarray:
    # lazy: keeps skimage out of processes that never call this
    import skimage.data

    if name not in PHOTOS:
        raise ValueError(f"unknown photo {name!r}; choose from {', '.join(PHOTOS)}")
    if name.startswith("motorcycle"):
        left, right, _ = skimage.data.stereo_motorcycle()
        image = left if name.endswith("left") else right
    else:
        image = getattr(skimage.data, name)()
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    return image[..., :3].astype(np.uint8)


def write_crops(folder: str, photos: list[str], count: int, size: int, seed: int = 0) -> list[str]:
    """`count` random size x size crops, spread evenly over `photos`; returns the file paths."""
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    images = [load_photo(p) for p in photos]
    paths = []
    for i in range(count):
        which = i % len(images)
        image = images[which]
        h, w = image.shape[:2]
        top, left = rng.integers(0, h - size + 1), rng.integers(0, w - size + 1)
        path = os.path.join(folder, f"{photos[which]}-{i:05d}.png")
        Image.fromarray(image[top:top + size, left:left + size]).save(path)
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.train.sample_photos", description=__doc__.splitlines()[0])
    parser.add_argument("folder")
    parser.add_argument("--count", type=int, default=512)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--photos", default=",".join(TRAIN_PHOTOS), help="comma-separated names from: "
                        + "; ".join(f"{name} ({licence})" for name, licence in LICENCES.items()))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    paths = write_crops(args.folder, args.photos.split(","), args.count, args.size, args.seed)
    print(f"wrote {len(paths)} crops of {args.size}x{args.size} to {args.folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
