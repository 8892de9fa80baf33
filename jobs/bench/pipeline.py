"""`latentmill bench pipeline`: each stage alone, the whole pipeline, and the naive diffusers loop.

In one process, on one machine, with the same model, sampler, sizes, prompts and seeds:
  (a) each stage alone at the batch size it gets in the pipeline, on the threads its actor uses
      (warm-up batch first, then timed batches): per-item seconds t_i;
  (b) the pipeline (`run_job` on a fresh output): committed images / streaming time (actor start-up,
      a one-off, is left out and shown apart);
  (c) the loop a user would write without latentmill: one diffusers StableDiffusionXLPipeline call
      per batch, decoding inside it, saving PNG files, on all cores (model loading left out).
Then:
  bound      = the ideal the resources allow (the same definition as `bench scheduler`). Stages with
               their own devices (GPUs): min over stages of actors_i / t_i (the slowest stage sets the
               pace), the write stage's included. Stages sharing the CPU cores (no GPU): also at most
               cores / sum_i(t_i x threads_i), the core-seconds one image needs at the actors' own
               thread counts ("perfect packing": time-sharing the cores costs nothing). Printed for
               reference, not as the bound: 1 / sum_i T_i, with T_i stage i's per-item time alone on
               all the cores (the stages taking turns on the whole machine; the looser bound used before).
  efficiency = pipeline / bound;   speed-up = pipeline / naive loop.
Prints a table (and --json). Needs Ray; the naive loop needs only torch and diffusers.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shutil
import sys
import tempfile
import time

from PIL import Image

import decoders
from pipelines.config import MODEL_VAE

DEFAULT_SPEC = """
name: bench-pipeline
model: {family: sdxl, reference: tiny, dtype: float32}
sampler: {scheduler: euler, steps: 8, guidance_scale: 5.0, height: 128, width: 128}
prompts:
  inline: [a lighthouse on a cliff at dusk, a red fox in fresh snow, an isometric pixel-art city block at night,
           a bowl of ramen on a wooden table]
  images_per_prompt: 64
num_images: 256
seed: 0
decoder: sdxl-vae
output: {url: UNSET, image_format: png, samples_per_shard: 32}
# Sized for a 2-core CPU machine: two single-threaded denoise actors keep both cores busy while
# the (cheaper) decode actor and the writes fill the gaps. 2 x 0.75 + 0.25 + 2 x 0.125 = 2 CPUs.
stages:
  denoise: {num_gpus: auto, num_cpus: 0.75, concurrency: 2, batch_size: 8}
  decode: {num_gpus: auto, num_cpus: 0.25, concurrency: 1, batch_size: 8}
  write: {num_cpus: 0.125, concurrency: 2}
"""


def parse_args(argv):
    p = argparse.ArgumentParser(prog="latentmill bench pipeline", description=__doc__.splitlines()[0])
    p.add_argument("--spec", help="job spec to benchmark (default: the built-in tiny-model spec, see --show-spec)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a spec field, e.g. --set num_images=64 (repeatable)")
    p.add_argument("--stage-batches", type=int, default=5, help="timed batches per stage alone (after 1 warm-up)")
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local cluster)")
    p.add_argument("--workdir", help="where outputs go (default: a temporary folder, removed after)")
    p.add_argument("--show-spec", action="store_true", help="print the built-in spec and exit")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    return p.parse_args(argv)


def load_bench_spec(args, output_url: str):
    # lazy: keeps pyarrow, numpy out of processes that never call this
    from jobs.spec import load_spec, parse_spec

    overrides = [*args.overrides, f"output.url={output_url}"]
    if args.spec:
        return load_spec(args.spec, overrides)
    return parse_spec(DEFAULT_SPEC, source="<built-in bench spec>", overrides=overrides)


def actor_threads(num_cpus: float) -> int:
    return max(1, int(num_cpus))  # what pipelines/actors.py gives an actor


def _timed(fn, batches: list, threads: int) -> tuple[float, list]:
    """Seconds per item over `batches` after one untimed warm-up call; returns outputs too."""
    # lazy: keeps torch out of processes that never call this
    import torch

    torch.set_num_threads(threads)
    fn(batches[0])
    outputs, items = [], 0
    started = time.perf_counter()
    for batch in batches:
        outputs.append(fn(batch))
        items += len(batch["keys"])
    return (time.perf_counter() - started) / items, outputs


def measure_stages(spec, plan, batches: int, workdir: str, all_cores: int | None = None) -> dict:
    """(a) Each stage alone, in this process, on the threads and device its actor would use; with
    `all_cores`, also on that many threads (per_item_all_cores_s), for the shared-CPU bound."""
    # lazy: keeps pyarrow, numpy out of processes that never call this
    from jobs.local import pipeline_for

    denoise_def, decode_def = pipeline_for(spec, plan).stages
    size = spec.stages.denoise.batch_size
    samples = [plan.sample(i).as_dict() for i in range(min(len(plan), size * (batches + 1)))]
    denoise_batches = [
        {"keys": [s["key"] for s in samples[i : i + size]], "samples": samples[i : i + size]}
        for i in range(0, len(samples), size)
    ][:batches]
    d_threads = actor_threads(spec.stages.denoise.num_cpus)
    c_threads = actor_threads(spec.stages.decode.num_cpus)

    denoise = denoise_def.build()
    t_denoise, latents = _timed(denoise, denoise_batches, d_threads)
    t_denoise_all = _timed(denoise, denoise_batches, all_cores)[0] if all_cores else None
    del denoise
    decode = decode_def.build()
    # The pipeline hands decode the denoise batches as they are; it decodes them in chunks of its own batch_size.
    t_decode, decoded = _timed(decode, latents, c_threads)
    t_decode_all = _timed(decode, latents, all_cores)[0] if all_cores else None
    del decode
    free_device_memory()

    for result in decoded:
        result["timings"] = {}
    shard = samples[: spec.output.samples_per_shard]
    keys = {s["key"] for s in shard}
    shard_decoded = [d for d in decoded if d["keys"][0] in keys]
    shard = [s for s in shard if any(s["key"] in d["keys"] for d in shard_decoded)]
    metadata = {"job": spec.name}
    write = _writer(spec, workdir, shard, metadata, shard_decoded)
    write(None)  # warm-up
    started = time.perf_counter()
    write(None)
    t_write = (time.perf_counter() - started) / len(shard)
    return {
        "denoise": {"per_item_s": t_denoise, "batch": size, "threads": d_threads,
                    "actors": spec.stages.denoise.max_actors, "per_item_all_cores_s": t_denoise_all},
        "decode": {"per_item_s": t_decode, "batch": size, "threads": c_threads,
                   "actors": spec.stages.decode.max_actors, "per_item_all_cores_s": t_decode_all},
        # Writing is I/O plus one thread of tar/hash work: all cores do not make it faster.
        "write": {"per_item_s": t_write, "batch": len(shard), "threads": 1, "actors": spec.stages.write.concurrency,
                  "per_item_all_cores_s": t_write if all_cores else None},
    }


def _writer(spec, workdir, shard, metadata, decoded):
    # lazy: keeps pyarrow, numpy out of processes that never call this
    from pipelines.sinks.webdataset_writer import write_shard

    url = os.path.join(workdir, "write-alone")

    def write(_):
        return write_shard(url, spec.output.storage, "00000", shard, metadata, [], None, (), *decoded)

    return write


def run_whole_pipeline(spec, address: str | None) -> dict:
    """(b) The whole pipeline on a fresh output."""
    # lazy: keeps pyarrow, numpy out of processes that never call this
    from jobs.local import run_job

    report = run_job(spec, address=address, progress=False)
    stream = report.get("stream_s") or report["wall_s"]
    return {
        "images": report["generated"],
        "stream_s": stream,
        "wall_s": report["wall_s"],
        "startup_s": report.get("startup_s"),
        "images_per_s": report["generated"] / stream,
        "stages": {n: {"utilisation": s["utilisation"], "capacity_items_per_s": s["capacity_items_per_s"]}
                   for n, s in report["stages"].items()},
    }


def run_naive_loop(spec, plan, workdir: str) -> dict:
    """(c) One diffusers call per batch, decoding inside it, PNG files saved; all cores."""
    # lazy: keeps torch out of processes that never call this
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    pipe = naive_pipeline(spec, device)
    if spec.decoder != MODEL_VAE:
        decoder = decoders.load(spec.decoder, device=device)
    out = os.path.join(workdir, "naive")
    os.makedirs(out, exist_ok=True)
    s, size = spec.sampler, spec.stages.denoise.batch_size
    samples = [plan.sample(i) for i in range(len(plan))]
    started = time.perf_counter()
    for i in range(0, len(samples), size):
        batch = samples[i : i + size]
        kwargs = dict(
            prompt=[x.prompt for x in batch],
            negative_prompt=[s.negative_prompt] * len(batch) if s.negative_prompt else None,
            num_inference_steps=s.steps, guidance_scale=s.guidance_scale, height=s.height, width=s.width,
            generator=[torch.Generator("cpu").manual_seed(x.seed) for x in batch],
        )
        if spec.decoder == MODEL_VAE:
            images = pipe(**kwargs, output_type="pil").images
        else:
            pixels = decoder.decode(pipe(**kwargs, output_type="latent").images.float())
            arrays = (pixels * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
            images = [Image.fromarray(a) for a in arrays]
        for x, image in zip(batch, images):
            image.save(os.path.join(out, f"{x.key}.{spec.output.image_format}"))
    seconds = time.perf_counter() - started
    return {"images": len(samples), "seconds": seconds, "images_per_s": len(samples) / seconds,
            "threads": torch.get_num_threads()}


def naive_pipeline(spec, device: str):
    """The diffusers StableDiffusionXLPipeline a user would call, its VAE inside unless the job has
    its own decoder. Loaded by the project's loader, not `from_pretrained` alone: a random build
    (random:sdxl) has no folder to load from, and is built on `device` directly."""
    # lazy: keeps torch, diffusers out of processes that never call this
    from pipelines.models.loading import load_denoise_pipeline, load_model_vae

    s = spec.model
    pipe = load_denoise_pipeline(s.reference, s.dtype, spec.sampler.scheduler, device).to(device)
    if spec.decoder == MODEL_VAE:
        pipe.vae = load_model_vae(s.reference, device, s.dtype).model
    return pipe


def free_device_memory() -> None:
    """Between the parts: the driver's models are gone before the pipeline's actors load theirs on
    the same GPU (torch keeps freed CUDA memory cached for this process otherwise)."""
    # lazy: keeps torch out of processes that never call this
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def bound_of(stages: dict, shared_cores: int | None) -> dict:
    """The ideal the resources allow (see the module docstring).

    Own devices: min over stages of actors_i / t_i. Shared CPU cores: also cores / sum(t_i x threads_i)
    with the actors' own thread counts ("perfect packing"). `turns_images_per_s` (1 / sum of each
    stage's per-item time on all the cores) is the looser reference the benchmark used before.
    """
    limits = {n: s["actors"] / s["per_item_s"] for n, s in stages.items()}
    turns = None
    if shared_cores:
        limits[f"perfect packing on {shared_cores} cores"] = (
            shared_cores / sum(s["per_item_s"] * s["threads"] for s in stages.values()))
        turns = 1 / sum(s["per_item_all_cores_s"] for s in stages.values())
    limit = min(limits, key=limits.get)
    return {"images_per_s": limits[limit], "set_by": limit, "limits": limits, "turns_images_per_s": turns}


def run_bench(args) -> dict:
    # lazy: keeps pyarrow, numpy out of processes that never call this
    from jobs.local import connect_ray, plan_for

    workdir = args.workdir or tempfile.mkdtemp(prefix="latentmill-bench-")
    spec = load_bench_spec(args, os.path.join(workdir, "pipeline"))
    plan = plan_for(spec)
    connect_ray(args.address)
    # lazy: keeps ray out of processes that never call this
    import ray

    gpus = ray.cluster_resources().get("GPU", 0)
    cpus = int(ray.cluster_resources().get("CPU", os.cpu_count() or 1))
    shared = None if gpus > 0 else cpus
    stages = measure_stages(spec, plan, args.stage_batches, workdir, all_cores=shared)
    pipeline = run_whole_pipeline(spec, args.address)
    naive = run_naive_loop(spec, plan, workdir)
    bound = bound_of(stages, shared)
    return {
        "spec": {"model": spec.model.reference, "size": f"{spec.sampler.width}x{spec.sampler.height}",
                 "steps": spec.sampler.steps, "scheduler": spec.sampler.scheduler, "decoder": spec.decoder,
                 "format": spec.output.image_format, "images": len(plan)},
        "machine": {"cpus": cpus, "gpus": gpus, "platform": platform.platform(), "python": sys.version.split()[0],
                    "load_avg_1m": os.getloadavg()[0]},
        "stages": stages,
        "bound": bound,
        "pipeline": pipeline,
        "naive": naive,
        "efficiency": pipeline["images_per_s"] / bound["images_per_s"],
        "efficiency_vs_turns": (pipeline["images_per_s"] / bound["turns_images_per_s"]
                                if bound["turns_images_per_s"] else None),
        "speedup": pipeline["images_per_s"] / naive["images_per_s"],
        "workdir": workdir,
    }


def format_table(result: dict) -> str:
    s, m = result["spec"], result["machine"]
    lines = [
        f"model {s['model']}, {s['size']}, {s['steps']} {s['scheduler']} steps, decoder {s['decoder']}, {s['format']}, "
        f"{s['images']} images; {m['cpus']} CPUs, {m['gpus']:g} GPUs; load {m['load_avg_1m']:.2f} at the end",
        "",
        "| what | batch | threads | actors | ms per item | images/s |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, st in result["stages"].items():
        lines.append(f"| {name} alone | {st['batch']} | {st['threads']} | {st['actors']} | "
                     f"{1000 * st['per_item_s']:.1f} | {1 / st['per_item_s']:.2f} per actor |")
        if st.get("per_item_all_cores_s") and name != "write":
            lines.append(f"| {name} alone, all cores | {st['batch']} | {m['cpus']} | 1 | "
                         f"{1000 * st['per_item_all_cores_s']:.1f} | {1 / st['per_item_all_cores_s']:.2f} |")
    b, p, n = result["bound"], result["pipeline"], result["naive"]
    limits = ", ".join(f"{k} {v:.2f}" for k, v in b["limits"].items())
    lines += [
        f"| bound (set by {b['set_by']}; limits: {limits}) | | | | | {b['images_per_s']:.2f} |",
        f"| pipeline ({p['images']} images in {p['stream_s']:.1f} s streaming; +{p['startup_s'] or 0:.1f} s actor start-up) "
        f"| | | | {1000 / p['images_per_s']:.1f} | {p['images_per_s']:.2f} |",
        f"| naive diffusers loop ({n['images']} images in {n['seconds']:.1f} s) | "
        f"{result['stages']['denoise']['batch']} | {n['threads']} | 1 | {1000 / n['images_per_s']:.1f} | {n['images_per_s']:.2f} |",
        "",
        f"efficiency = pipeline / bound = {result['efficiency']:.3f}",
        *([f"  (vs the looser bound of stages taking turns on all {m['cpus']} cores, "
           f"{b['turns_images_per_s']:.2f} images/s: {result['efficiency_vs_turns']:.3f})"]
          if result.get("efficiency_vs_turns") else []),
        f"speed-up   = pipeline / naive = {result['speedup']:.3f}",
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv or [])
    if args.show_spec:
        print(DEFAULT_SPEC.strip())
        return 0
    result = run_bench(args)
    if not args.workdir:
        shutil.rmtree(result["workdir"], ignore_errors=True)
    print(json.dumps(result, indent=2) if args.json else format_table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
