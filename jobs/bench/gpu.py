"""`latentmill bench gpu`: every GPU figure of the project from one command, on random full-size models.

Parts (each prints a markdown table; `--out FILE` writes them into FILE between the bench markers):
  1 decoders    sdxl-vae, taesdxl's architecture, tae-192, effvit, lean at 512/1024 px, fp16/fp32, batch 1/8:
                CUDA-synchronised median latency after warm-up, images/s, peak memory, speed-up vs sdxl-vae
  2 denoise     random:sdxl at 1024 px, 30 steps, batch 1/4/8, fp16, without and with torch.compile:
                seconds per image (steady) and the compile time apart
  3 end to end  latentmill jobs on one GPU (denoise 0.75 + decode 0.25) and on two (one each), with the
                SDXL VAE and with a light decoder: images/s and the gain (needs Ray; skipped without it)
  4 video       random:svd-xt, 14 frames at 576x1024: seconds per clip with the SVD VAE and with tae-temporal
  5 profile     the measured per-item times of the parts run (1 + 2, 4) as a profile file (--profile-out)
                that `bench scheduler --profiles` and a job's `stages.auto_profile` take

Parts 1, 2 and 4 need only torch, diffusers and this repository (a GPU machine may lack Ray).
`--smoke` runs the same code at tiny sizes on the CPU (tiny models, 64 px, 2 steps): a test runs it so
the command cannot rot; its figures say nothing about GPUs. The weights are random: outputs are noise,
costs are the real models'.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import os
import statistics
import sys
import time
from dataclasses import dataclass
from functools import partial

import torch
import yaml

import decoders
from decoders.bench import machine
from pipelines.stages.gpu_settings import configure_backends, prepare

MARK_START, MARK_END = "<!-- bench-gpu:start -->", "<!-- bench-gpu:end -->"
LIGHT_DECODERS = ("taesd", "tae-192", "effvit", "lean")  # taesd: the architecture taesdxl's weights fit


@dataclass(frozen=True)
class Sizes:
    """What each part runs: the published sizes, or tiny ones for --smoke."""

    tiny: bool
    decode_sizes: tuple = (512, 1024)
    decode_batches: tuple = (1, 8)
    dtypes: tuple = ("float16", "float32")
    sdxl: str = "random:sdxl"
    sdxl_size: int = 1024
    steps: int = 30
    denoise_batches: tuple = (1, 4, 8)
    compile: tuple = (False, True)
    svd: str = "random:svd-xt"
    frames: int = 14
    video_size: tuple = (576, 1024)
    video_steps: int = 25
    e2e_images: int = 32
    warmup: int = 2
    repeats: int = 5


SMOKE = Sizes(tiny=True, decode_sizes=(64,), decode_batches=(1, 2), dtypes=("float32",), sdxl="tiny", sdxl_size=64,
              steps=2, denoise_batches=(1, 2), compile=(False,), svd="tiny", frames=4, video_size=(64, 64),
              video_steps=2, e2e_images=4, warmup=1, repeats=2)


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def first_call(fn) -> tuple[float, float | None]:
    """Seconds of the first call (a compile happens there) and its peak CUDA memory above what was
    allocated before (weights excluded; None on a CPU)."""
    cuda = torch.cuda.is_available()
    sync()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    started = time.perf_counter()
    fn()
    sync()
    seconds = time.perf_counter() - started
    return seconds, round((torch.cuda.max_memory_allocated() - before) / 2**20, 1) if cuda else None


def median_s(fn, warmup: int, repeats: int) -> float:
    """Median seconds of `repeats` CUDA-synchronised calls after `warmup` more."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync()
        started = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


# -- part 1: decoders ----------------------------------------------------------------------------------

def decoder_rows(sizes: Sizes) -> list[dict]:
    rows = []
    for dtype in sizes.dtypes:
        for size in sizes.decode_sizes:
            for batch in sizes.decode_batches:
                group = [decoder_row(arch, size, dtype, batch, sizes) for arch in ("sdxl-vae", *LIGHT_DECODERS)]
                base = group[0].get("latency_s")
                for row in group:
                    row["speedup"] = base / row["latency_s"] if base and row.get("latency_s") else None
                rows += group
    return rows


def decoder_row(arch: str, size: int, dtype: str, batch: int, sizes: Sizes) -> dict:
    row = {"decoder": arch, "size": size, "dtype": dtype, "batch": batch}
    try:
        dec = decoders.build(f"random:{arch}" + ("-tiny" if sizes.tiny else ""), device=device(),
                             dtype=getattr(torch, dtype))
        if str(dec.dtype) != f"torch.{dtype}":  # the SDXL VAE's force_upcast
            row["dtype"] = f"{dtype}->{str(dec.dtype)[6:]}"
        z = torch.randn(batch, dec.latent_channels, size // 8, size // 8, device=device())
        run = partial(dec.decode, z)
        _, row["peak_mb"] = first_call(run)  # the first call is warm-up too
        row["latency_s"] = median_s(run, sizes.warmup - 1, sizes.repeats)
        row["images_per_s"] = batch / row["latency_s"]
    except torch.cuda.OutOfMemoryError:
        row["note"] = "out of GPU memory"
    finally:
        free_cuda()
    return row


def free_cuda() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# -- part 2: SDXL denoise ------------------------------------------------------------------------------

def denoise_rows(sizes: Sizes) -> list[dict]:
    # lazy: keeps fsspec out of processes that never call this
    from pipelines.models.loading import load_denoise_pipeline

    dtype = "float16" if torch.cuda.is_available() else "float32"  # CPUs run fp16 convolutions slowly or not at all
    configure_backends(device())
    rows = []
    for compiled in sizes.compile:
        pipe = load_denoise_pipeline(sizes.sdxl, dtype, "default", device()).to(device())
        prepare(pipe.unet, channels_last=compiled, compile=compiled)
        for batch in sizes.denoise_batches:
            row = {"model": sizes.sdxl, "size": sizes.sdxl_size, "steps": sizes.steps, "dtype": dtype, "batch": batch,
                   "compile": compiled}
            run = partial(pipe, prompt=["a lighthouse"] * batch, num_inference_steps=sizes.steps,
                          height=sizes.sdxl_size, width=sizes.sdxl_size, output_type="latent")
            try:
                first, row["peak_mb"] = first_call(run)
                median = median_s(run, 0, max(1, sizes.repeats // 2))
                row.update(s_per_image=median / batch, compile_s=max(0.0, first - median) if compiled else None)
            except torch.cuda.OutOfMemoryError:
                row["note"] = "out of GPU memory"
            free_cuda()
            rows.append(row)
        pipe = None  # freed before the next build
    return rows


# -- part 4: SVD-XT ------------------------------------------------------------------------------------

def video_rows(sizes: Sizes) -> list[dict]:
    # lazy: keeps PIL out of processes that never call this
    from PIL import Image

    from pipelines.models.loading import load_video_pipeline

    dtype = "float16" if torch.cuda.is_available() else "float32"
    pipe = load_video_pipeline(sizes.svd, dtype, device()).to(device())
    h, w = sizes.video_size
    image = Image.new("RGB", (w, h), (120, 90, 60))

    denoise = partial(pipe, image=image, height=h, width=w, num_frames=sizes.frames,
                      num_inference_steps=sizes.video_steps, output_type="latent")
    first_call(denoise)  # warm-up
    sync()
    started = time.perf_counter()
    z = denoise().frames.float()
    sync()
    denoise_s = time.perf_counter() - started
    pipe = denoise = None  # freed before the decoders load
    rows = [video_decode_row(name, z, denoise_s, dtype, sizes) for name in ("svd-vae", "tae-temporal")]
    base = rows[0].get("s_per_clip")
    for row in rows:
        row["gain_pct"] = 100 * (base / row["s_per_clip"] - 1) if base and row.get("s_per_clip") else None
    return rows


def video_decode_row(name: str, z: torch.Tensor, denoise_s: float, dtype: str, sizes: Sizes) -> dict:
    # lazy: keeps fsspec out of processes that never call this
    from pipelines.models.loading import ensure_tiny_svd, load_model_vae

    h, w = sizes.video_size
    row = {"model": sizes.svd, "frames": sizes.frames, "size": f"{h}x{w}", "decoder": name, "denoise_s": denoise_s}
    try:
        dec = (load_model_vae(sizes.svd, device(), dtype, tiny=ensure_tiny_svd) if name == "svd-vae"
               else decoders.build("random:tae-temporal" + ("-tiny" if sizes.tiny else ""), device=device(),
                                   dtype=getattr(torch, dtype)))
        row["decode_s"] = median_s(partial(decode_clip, dec, z), 1, max(1, sizes.repeats // 2))
        row["s_per_clip"] = denoise_s + row["decode_s"]
    except torch.cuda.OutOfMemoryError:
        row["note"] = "out of GPU memory"
    free_cuda()
    return row


def decode_clip(dec, z: torch.Tensor) -> None:
    for _ in dec.decode_chunks(z, z.shape[1]):  # each chunk dropped once decoded, as the decode stage does
        pass


# -- part 3: end to end (latentmill jobs on Ray) -------------------------------------------------------

E2E_LAYOUTS = {  # name: (GPUs the layout needs, denoise num_gpus, decode num_gpus)
    "one GPU (denoise 0.75 + decode 0.25)": (1, 0.75, 0.25),
    "two GPUs (one per stage)": (2, 1.0, 1.0),
}


def e2e_spec(sizes: Sizes, decoder: str, denoise_gpus: float, decode_gpus: float, url: str):
    # lazy: keeps pyarrow, PIL, numpy out of processes that never call this
    from jobs.spec import parse_spec

    batch = 2 if sizes.tiny else 8
    cpus = {"denoise": 0.5, "decode": 0.25} if sizes.tiny else {"denoise": 2, "decode": 2}
    spec = {
        "name": "bench-gpu", "kind": "generate",
        "model": {"reference": sizes.sdxl, "dtype": "float16" if torch.cuda.is_available() else "float32"},
        "sampler": {"steps": sizes.steps, "height": sizes.sdxl_size, "width": sizes.sdxl_size},
        "prompts": {"inline": ["a lighthouse on a cliff at dusk", "a red fox in fresh snow"]},
        "num_images": sizes.e2e_images, "decoder": decoder,
        "output": {"url": url, "samples_per_shard": 2 * batch},
        "stages": {"denoise": {"num_gpus": denoise_gpus, "num_cpus": cpus["denoise"], "batch_size": batch},
                   "decode": {"num_gpus": decode_gpus, "num_cpus": cpus["decode"], "batch_size": batch},
                   "write": {"num_cpus": 0.25, "concurrency": 1}},
    }
    return parse_spec(yaml.safe_dump(spec), source="bench-gpu")


def e2e_rows(sizes: Sizes, address: str | None, workdir: str) -> list[dict]:
    try:
        # lazy: keeps ray out of processes that never call this
        import ray
    except ImportError:
        return [{"layout": "-", "decoder": "-", "skipped": "Ray is not installed here: part 3 needs it"}]
    # lazy: keeps pyarrow, PIL, numpy out of processes that never call this
    from jobs.local import connect_ray, run_job

    connect_ray(address)
    gpus = ray.cluster_resources().get("GPU", 0)
    light = "random:taesd" + ("-tiny" if sizes.tiny else "")
    rows = []
    for layout, (needs, denoise_gpus, decode_gpus) in E2E_LAYOUTS.items():
        for decoder in ("sdxl-vae", light):
            row = {"layout": layout, "decoder": decoder}
            if gpus < needs:
                rows.append({**row, "skipped": f"needs {needs} GPU(s), the cluster has {gpus:g}"})
                continue
            url = os.path.join(workdir, f"e2e-{needs}-{decoder.replace(':', '-')}")
            report = run_job(e2e_spec(sizes, decoder, denoise_gpus, decode_gpus, url), address=address, progress=False)
            row["images_per_s"] = report["generated"] / report["stream_s"] if report["stream_s"] else None
            rows.append(row)
        base, lit = rows[-2].get("images_per_s"), rows[-1].get("images_per_s")
        if base and lit:
            rows[-1]["gain_pct"] = 100 * (lit / base - 1)
    return rows


# -- part 5: the profile `bench scheduler` takes -------------------------------------------------------

def measured_profiles(decode: list[dict], denoise: list[dict], video: list[dict], sizes: Sizes) -> dict:
    """Seconds per item on one GPU, per stage, from the largest batch measured (as a job runs)."""
    plain = [r for r in denoise if not r["compile"] and r.get("s_per_image")]
    best_denoise = min(plain, key=lambda r: r["s_per_image"]) if plain else None
    size, dtype = max(sizes.decode_sizes), sizes.dtypes[0]

    def decode_stage(arch):
        """The largest batch that fitted, at the largest size in the first dtype: its seconds per image."""
        rows = [r for r in decode if r["decoder"] == arch and r["size"] == size and r["dtype"].startswith(dtype)
                and r.get("latency_s")]
        row = max(rows, key=lambda r: r["batch"], default=None)
        return row and {"per_item_s": round(row["latency_s"] / row["batch"], 5), "batch_size": row["batch"]}

    profiles = {}
    if best_denoise:
        for name, arch in (("vae", "sdxl-vae"), ("light", "taesd")):
            if decode_stage(arch):
                profiles[f"sdxl-{size}-{name}"] = {
                    "description": f"{sizes.sdxl}, {size}x{size}, {sizes.steps} steps, {arch} decode (measured)",
                    "unit": "image", "samples_per_shard": 32,
                    "stages": {"denoise": {"per_item_s": round(best_denoise["s_per_image"], 4),
                                           "batch_size": best_denoise["batch"]},
                               "decode": decode_stage(arch)}}
    if video and video[0].get("decode_s"):  # the SVD VAE fitted: a whole measurement
        h, w = sizes.video_size
        profiles[f"svd-xt-{h}x{w}"] = {
            "description": f"{sizes.svd}, {sizes.frames} frames {h}x{w}, {sizes.video_steps} steps, svd-vae decode "
                           "(measured)", "unit": "clip", "samples_per_shard": 8,
            "stages": {"denoise": {"per_item_s": round(video[0]["denoise_s"], 3), "batch_size": 1},
                       "decode": {"per_item_s": round(video[0]["decode_s"], 3), "batch_size": 1}}}
    return profiles


def write_profiles(path: str, profiles: dict, machine_line: str) -> None:
    header = (f"# Stage profiles for `latentmill bench scheduler --profiles {path}`, measured by `latentmill bench gpu`\n"
              f"# on {machine_line}, {dt.date.today().isoformat()}: seconds per item on ONE GPU (random full-size\n"
              "# weights, which cost what the trained ones do).\n\n")
    with open(path, "w") as f:
        f.write(header + yaml.safe_dump({"profiles": profiles}, sort_keys=False))


# -- output --------------------------------------------------------------------------------------------

def _cell(value, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def md_table(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    lines = ["| " + " | ".join(title for _, title in columns) + " |", "| --- " * len(columns) + "|"]
    lines += ["| " + " | ".join(_cell(row.get(key)) for key, _ in columns) + " |" for row in rows]
    return "\n".join(lines)


TABLES = {
    "decoders": [("decoder", "decoder"), ("size", "px"), ("dtype", "dtype"), ("batch", "batch"),
                 ("latency_s", "median s"), ("images_per_s", "images/s"), ("peak_mb", "peak MB"),
                 ("speedup", "x sdxl-vae"), ("note", "note")],
    "denoise": [("model", "model"), ("size", "px"), ("steps", "steps"), ("dtype", "dtype"), ("batch", "batch"),
                ("compile", "compile"), ("s_per_image", "s/image"), ("compile_s", "compile s"), ("peak_mb", "peak MB"),
                ("note", "note")],
    "end to end": [("layout", "layout"), ("decoder", "decoder"), ("images_per_s", "images/s"),
                   ("gain_pct", "gain % vs sdxl-vae"), ("skipped", "note")],
    "video": [("model", "model"), ("frames", "frames"), ("size", "size"), ("decoder", "decoder"),
              ("denoise_s", "denoise s/clip"), ("decode_s", "decode s/clip"), ("s_per_clip", "s/clip"),
              ("gain_pct", "gain % vs svd-vae"), ("note", "note")],
}


def render(results: dict, machine_line: str, smoke: bool) -> str:
    label = ("**CPU smoke run** (`--smoke`: tiny models, 64 px, 2 steps): checks the command, says nothing about "
             "GPUs. GPU figures: pending a GPU" if smoke else "measured")
    lines = [f"Machine: {machine_line}. {label}; {dt.date.today().isoformat()}. Random weights: outputs are noise."]
    for part, rows in results.items():
        lines += ["", f"#### {part}", "", md_table(rows, TABLES[part])]
    return "\n".join(lines) + "\n"


def write_section(path: str, text: str) -> None:
    """Replace what lies between the bench markers in `path` (append them when missing)."""
    doc = open(path).read() if os.path.exists(path) else ""
    block = f"{MARK_START}\n{text}{MARK_END}"
    if MARK_START in doc and MARK_END in doc:
        doc = doc[:doc.index(MARK_START)] + block + doc[doc.index(MARK_END) + len(MARK_END):]
    else:
        doc = doc + ("\n" if doc else "") + block + "\n"
    with open(path, "w") as f:
        f.write(doc)


def parse_args(argv):
    p = argparse.ArgumentParser(prog="latentmill bench gpu", description=__doc__.split("\n")[0])
    p.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU (tests): checks the code, not GPUs")
    p.add_argument("--parts", default="1,2,3,4,5", help="which parts to run, e.g. 1,2 (default: all)")
    p.add_argument("--out", help="markdown file to write the tables into (between the bench-gpu markers)")
    p.add_argument("--profile-out", help="profiles YAML for `bench scheduler --profiles` (default on a GPU: "
                   "jobs/bench/profiles.gpu.yaml; none with --smoke)")
    p.add_argument("--compile", choices=("both", "no", "yes"), default="both",
                   help="part 2 without and with torch.compile (default both; `no` saves the compile minutes)")
    p.add_argument("--address", help="Ray cluster for part 3 (default: start a local one)")
    p.add_argument("--workdir", default=os.path.join(os.getcwd(), "latentmill-output", "bench-gpu"),
                   help="where part 3's jobs write")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    parts = {int(x) for x in args.parts.split(",") if x.strip()}
    sizes = SMOKE if args.smoke else Sizes(tiny=False)
    if not args.smoke and not torch.cuda.is_available():
        print("latentmill bench gpu: no CUDA GPU here; run it on a GPU machine, or --smoke to check the code on a CPU",
              file=sys.stderr)
        return 2
    if args.compile != "both":
        sizes = dataclasses.replace(sizes, compile=(args.compile == "yes",))
    # Part 5 writes the profiles of the parts that ran (1 + 2: the SDXL profiles, 4: the SVD-XT one), so
    # a short GPU lease can run `--parts 1,2,5` and `--parts 4,5` in two calls.
    steps = [(1 in parts, "decoders", lambda: decoder_rows(sizes)),
             (2 in parts, "denoise", lambda: denoise_rows(sizes)),
             (3 in parts, "end to end", lambda: e2e_rows(sizes, args.address, args.workdir)),
             (4 in parts, "video", lambda: video_rows(sizes))]
    profile_out = args.profile_out or (None if args.smoke else os.path.join("jobs", "bench", "profiles.gpu.yaml"))
    results, profiles = {}, {}
    for wanted, part, run in steps:
        if not wanted:
            continue
        results[part] = run()
        # Written after every part: a run stopped at a time limit keeps the parts it finished.
        if args.out:
            write_section(args.out, render(results, machine(), args.smoke))
        if 5 in parts and profile_out:
            profiles = measured_profiles(results.get("decoders", []), results.get("denoise", []),
                                         results.get("video", []), sizes)
            write_profiles(profile_out, profiles, machine())
    print(render(results, machine(), args.smoke))
    if 5 in parts and profile_out:
        print(f"profile: {profile_out} ({', '.join(profiles) or 'none measured'}); "
              f"`latentmill bench scheduler --profiles {profile_out}`, or a job's "
              f"`stages.auto_profile: {{file: {profile_out}, name: NAME}}`")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
