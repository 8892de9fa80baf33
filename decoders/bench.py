"""`latentmill bench decoders`: params, FLOPs, latency and peak memory of every decoder, per size.

Video decoders are timed per clip length (`--frames 8,14,25`) and, for decoders that decode exact
chunks of frames (tae-temporal), per chunk length (`--chunk-frames all,4`): a chunked decode hands
each chunk on and keeps nothing, as the decode stage does, so its peak memory is one chunk's.

Latency is measured the honest way: warm-up decodes first, the device synchronised around each
timed decode, median and spread over repeats. FLOPs are counted on the meta device (exact and
instant, see flops.py). Needs only torch, diffusers and this package, so it runs on a bare GPU box.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import textwrap
import threading
import time

import torch

from .base import Decoder
from .flops import count_flops
from .loading import build
from .registry import ARCHITECTURES

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
IMAGE_BASELINE, VIDEO_BASELINE = "sdxl-vae", "svd-vae"


def _parse_list(s: str, cast=str) -> list:
    return [cast(x) for x in s.split(",") if x.strip()]


def _parse_chunks(s: str) -> list[int | None]:
    return [None if x.strip() == "all" else int(x) for x in s.split(",") if x.strip()]


def parse_args(argv):
    p = argparse.ArgumentParser(prog="latentmill bench decoders", description=__doc__.splitlines()[0])
    p.add_argument("--decoders", type=_parse_list, default=list(ARCHITECTURES),
                   help="comma-separated architectures (default: all), built with random weights: "
                        "time and memory do not depend on the weights")
    p.add_argument("--sizes", type=lambda s: _parse_list(s, int), default=[256, 512, 1024], help="square pixel sizes")
    p.add_argument("--frames", type=lambda s: _parse_list(s, int), default=[14],
                   help="comma-separated frames per clip for video decoders (SVD: 14, SVD-XT: 25)")
    p.add_argument("--chunk-frames", type=_parse_chunks, default=[None],
                   help="comma-separated frames decoded at once, 'all' for whole clips (default: all); chunks "
                        "shorter than the clip only for decoders that decode them exactly (tae-temporal)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--devices", type=_parse_list, default=None, help="cpu,cuda (default: cpu, plus cuda if present)")
    p.add_argument("--dtypes", type=_parse_list, default=None,
                   help="per device (default: fp32 on cpu; fp16,bf16 on cuda). fp16 on sdxl-vae/svd-vae runs "
                        "upcast to fp32 (force_upcast), as diffusers does; the compute_dtype column says so")
    p.add_argument("--warmup", type=int, default=1, help="untimed decodes before timing")
    p.add_argument("--repeats", type=int, default=5, help="timed decodes (at most)")
    p.add_argument("--budget-s", type=float, default=60.0,
                   help="stop repeating once this many seconds were spent timing a row (at least 1 repeat)")
    p.add_argument("--max-gflop", type=float, default=None,
                   help="skip timing rows whose counted GFLOP exceed this (params/FLOPs still reported)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads on CPU")
    p.add_argument("--no-latency", action="store_true", help="params and FLOPs only (fast, no weights allocated)")
    p.add_argument("--interleave", action="store_true",
                   help="time all decoders of a size round-robin in one process, so load from other processes "
                        "hits each alike (fairer speed-ups on a shared machine; peak memory not measured)")
    p.add_argument("--in-process", action="store_true",
                   help="time CPU rows in this process (faster start; CPU peak memory less meaningful)")
    p.add_argument("--json", action="store_true", help="one JSON object per decoder, size and device/dtype")
    p.add_argument("--markdown", metavar="FILE",
                   help="also write the table with every column (memory, min-max, repeats, ...) as Markdown to FILE")
    args = p.parse_args(argv)
    unknown = set(args.decoders) - set(ARCHITECTURES)
    if unknown:
        p.error(f"unknown decoder architectures {sorted(unknown)}; available: {list(ARCHITECTURES)}")
    bad = set(args.dtypes or []) - set(DTYPES)
    if bad:
        p.error(f"unknown dtypes {sorted(bad)}; choose from {list(DTYPES)}")
    return args


class PeakRSS:
    """CPU peak memory: resident set size sampled every 5 ms from /proc/self/statm during the block,
    minus the RSS just before it. tracemalloc would miss tensors (torch allocates outside Python);
    and since malloc keeps freed memory for reuse, each row runs in a fresh process (see run)."""

    def __init__(self):
        self.page = os.sysconf("SC_PAGE_SIZE")
        self.peak = self.start = 0

    def _rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self.page

    def _poll(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss())
            time.sleep(0.005)

    def __enter__(self):
        self.start = self.peak = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())

    @property
    def delta_mb(self) -> float:
        return (self.peak - self.start) / 2**20


def decode_once(dec: Decoder, z: torch.Tensor, chunk_frames: int | None = None) -> None:
    if dec.is_video:
        for _ in dec.decode_chunks(z, chunk_frames or z.shape[1]):
            pass  # each chunk handed on and dropped, as the decode stage does
    else:
        dec.decode(z)


def time_decoder(dec: Decoder, z: torch.Tensor, *, warmup: int, repeats: int, budget_s: float,
                 chunk_frames: int | None = None) -> dict:
    """Peak memory covers the warm-up too: the first decode is where buffers are first allocated.

    Video decoders decode through `decode_chunks` (one chunk of the whole clip unless `chunk_frames`),
    each chunk dropped once decoded, so whole-clip and chunked rows are measured alike."""
    cuda = dec.device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    times = []

    def timed_loop():
        for _ in range(warmup):
            decode_once(dec, z, chunk_frames)
        sync()
        for _ in range(repeats):
            sync()
            t0 = time.perf_counter()
            decode_once(dec, z, chunk_frames)
            sync()
            times.append(time.perf_counter() - t0)
            if sum(times) > budget_s:
                break

    if cuda:
        sync()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        timed_loop()
        peak = (torch.cuda.max_memory_allocated() - before) / 2**20
        method = "cuda max_memory_allocated above the allocation before decoding (weights excluded)"
    else:
        with PeakRSS() as mem:
            timed_loop()
        peak = mem.delta_mb
        method = ("peak RSS above RSS before decoding (weights excluded), sampled every 5 ms from "
                  "/proc/self/statm, one fresh process per row")
    return {
        "median_s": statistics.median(times),
        "min_s": min(times),
        "max_s": max(times),
        "stdev_s": statistics.stdev(times) if len(times) > 1 else 0.0,
        "repeats": len(times),
        "warmup": warmup,
        "peak_mem_mb": round(peak, 1),
        "mem_method": method,
    }


def _configs(args) -> list[tuple[str, str]]:
    devices = args.devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    out = []
    for dev in devices:
        if dev == "cuda" and not torch.cuda.is_available():
            print("cuda requested but not available; skipping", file=sys.stderr)
            continue
        for dt in args.dtypes or (["fp32"] if dev == "cpu" else ["fp16", "bf16"]):
            out.append((dev, dt))
    return out


def run(args) -> list[dict]:
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    flops_cache: dict[tuple, int] = {}

    def flops(name: str, size: int, frames: int) -> int:
        key = (name, size, frames)
        if key not in flops_cache:
            flops_cache[key] = count_flops(build(name, device="meta"), size, size, frames=frames, batch=args.batch)
        return flops_cache[key]

    meta = {n: build(n, device="meta") for n in args.decoders}
    configs = [("meta", "-")] if args.no_latency else _configs(args)
    for device, dtype_name in configs:
        timed: dict[tuple, float] = {}
        for size in args.sizes:
            # Baselines first, so every row can report its speed-up.
            names = sorted(args.decoders, key=lambda n: n not in (IMAGE_BASELINE, VIDEO_BASELINE))
            todo = variants(args, names)
            rr = _interleaved(args, todo, device, dtype_name, size, flops) if args.interleave and device != "meta" else {}
            for name, frames, chunk in todo:
                spec = ARCHITECTURES[name]
                baseline = VIDEO_BASELINE if spec.is_video else IMAGE_BASELINE
                gflop = flops(name, size, frames) / 1e9
                base_gflop = flops(baseline, size, frames) / 1e9
                row = {
                    "decoder": name, "device": device, "dtype": dtype_name, "size": size,
                    "frames": frames if spec.is_video else None, "chunk_frames": chunk, "batch": args.batch,
                    "params_m": round(meta[name].num_parameters() / 1e6, 3),
                    "mb_fp16": round(meta[name].num_parameters() * 2 / 2**20, 1),
                    "gflop": round(gflop, 1), "baseline": baseline,
                    "flops_ratio": round(base_gflop / gflop, 2),  # how many times fewer FLOPs
                }
                if device != "meta":
                    variant = (name, frames, chunk)
                    row.update(rr[variant] if rr else _time_row(args, variant, device, dtype_name, size, gflop))
                    if row.get("median_s") and chunk is None:
                        timed[(name, size, frames)] = (row["median_s"], row["min_s"])
                    base = timed.get((baseline, size, frames))  # the baseline decodes whole clips
                    ok = bool(base and row.get("median_s"))
                    row["speedup"] = round(base[0] / row["median_s"], 2) if ok else None
                    # best-of-n ratio: robust when other processes share the machine (noise only adds)
                    row["speedup_best"] = round(base[1] / row["min_s"], 2) if ok else None
                rows.append(row)
                if args.json:
                    print(json.dumps(row), flush=True)
                else:
                    print(f"done {name} {device} {dtype_name} {size}px", file=sys.stderr, flush=True)
    return rows


def variants(args, names) -> list[tuple[str, int, int | None]]:
    """(decoder, frames, chunk_frames) to time: images once; videos per clip length and chunk length,
    chunks shorter than the clip only for decoders that decode exact chunks."""
    out = []
    for name in names:
        arch = ARCHITECTURES[name]
        if not arch.is_video:
            out.append((name, 1, None))
            continue
        for frames in args.frames:
            chunks = dict.fromkeys(None if c is None or c >= frames else c for c in args.chunk_frames
                                   if c is None or c >= frames or arch.supports_chunking)
            # A decoder that refuses every chunk length asked for still gets its whole-clip row.
            out += [(name, frames, c) for c in chunks] or [(name, frames, None)]
    return out


def _time_row(args, variant, device, dtype_name, size, gflop) -> dict:
    if args.max_gflop is not None and gflop > args.max_gflop:
        return {"skipped": f"{gflop:.0f} GFLOP > --max-gflop {args.max_gflop:g}", "median_s": None}
    if device == "cpu" and not args.in_process:
        return _time_row_subprocess(args, variant, dtype_name, size)
    return _time_row_here(args, variant, device, dtype_name, size)


def _latents(dec: Decoder, batch: int, frames: int, size: int, device) -> torch.Tensor:
    lead = (batch, frames) if dec.is_video else (batch,)
    f = dec.upscale_factor
    return torch.randn(*lead, dec.latent_channels, size // f, size // f, generator=torch.Generator().manual_seed(0)).to(device)


def _interleaved(args, todo, device, dtype_name, size, flops) -> dict[tuple, dict]:
    """Round-robin timing: repeat r decodes every decoder once before repeat r+1 starts."""
    decs, zs, out = {}, {}, {}
    for variant in todo:
        name, frames, _ = variant
        gflop = flops(name, size, frames) / 1e9
        if args.max_gflop is not None and gflop > args.max_gflop:
            out[variant] = {"skipped": f"{gflop:.0f} GFLOP > --max-gflop {args.max_gflop:g}", "median_s": None}
            continue
        decs[variant] = decs.get(name) or build(name, device=device, dtype=DTYPES[dtype_name])
        decs[name] = decs[variant]
        zs[variant] = _latents(decs[variant], args.batch, frames, size, device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    times = {v: [] for v in zs}
    for v in zs:
        for _ in range(args.warmup):
            decode_once(decs[v], zs[v], v[2])
    for _ in range(args.repeats):
        for v in zs:
            sync()
            t0 = time.perf_counter()
            decode_once(decs[v], zs[v], v[2])
            sync()
            times[v].append(time.perf_counter() - t0)
    for v, ts in times.items():
        out[v] = {
            "median_s": statistics.median(ts), "min_s": min(ts), "max_s": max(ts),
            "stdev_s": statistics.stdev(ts) if len(ts) > 1 else 0.0, "repeats": len(ts), "warmup": args.warmup,
            "peak_mem_mb": None, "mem_method": "not measured (--interleave)", "interleaved": True,
            "compute_dtype": str(decs[v].dtype).replace("torch.", ""), "loadavg_1m": round(os.getloadavg()[0], 2),
        }
    return out


def _time_row_subprocess(args, variant, dtype_name, size) -> dict:
    """Run one CPU row in a fresh interpreter: its RSS then reflects this decoder alone, and earlier
    rows' freed-but-cached memory cannot hide (or inflate) this one's peak."""
    job = dict(variant=variant, dtype=dtype_name, size=size, batch=args.batch, warmup=args.warmup,
               repeats=args.repeats, budget_s=args.budget_s, threads=args.threads or torch.get_num_threads())
    proc = subprocess.run([sys.executable, "-m", "decoders.bench", "--_worker", json.dumps(job)],
                          capture_output=True, text=True, cwd=os.path.dirname(os.path.dirname(__file__)) or ".")
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode or not lines:
        return {"skipped": f"worker failed: {proc.stderr.strip().splitlines()[-1:]}", "median_s": None}
    return json.loads(lines[-1])


def _worker(job: dict) -> int:
    torch.set_num_threads(job["threads"])
    args = argparse.Namespace(batch=job["batch"], warmup=job["warmup"], repeats=job["repeats"],
                              budget_s=job["budget_s"])
    print(json.dumps(_time_row_here(args, tuple(job["variant"]), "cpu", job["dtype"], job["size"])))
    return 0


def _time_row_here(args, variant, device, dtype_name, size) -> dict:
    name, frames, chunk = variant
    dec = build(name, device=device, dtype=DTYPES[dtype_name])
    z = _latents(dec, args.batch, frames, size, device)
    try:
        out = time_decoder(dec, z, warmup=args.warmup, repeats=args.repeats, budget_s=args.budget_s, chunk_frames=chunk)
    except torch.cuda.OutOfMemoryError as e:  # report it as a row instead of losing the whole run
        out = {"skipped": f"out of memory: {str(e).splitlines()[0]}", "median_s": None}
    out["compute_dtype"] = str(dec.dtype).replace("torch.", "")
    # Other processes on the machine skew CPU timings; keep the evidence with the numbers.
    out["loadavg_1m"] = round(os.getloadavg()[0], 2)
    del dec
    if device == "cuda":
        torch.cuda.empty_cache()
    return out


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    return (f"{cpu}, {os.cpu_count()} CPUs, torch {torch.__version__} ({torch.get_num_threads()} threads), {gpu}")


def format_table(rows: list[dict]) -> str:
    head = ["decoder", "device", "dtype", "size", "frames", "chunk", "params M", "MB fp16", "GFLOP", "FLOPs x fewer",
            "median s", "min-max s", "n", "peak MB", "speed-up median (best)", "vs"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        med = r.get("median_s")
        cells = [
            r["decoder"], r["device"], r.get("compute_dtype", r["dtype"]) if r["dtype"] != "-" else "-",
            f"{r['size']}x{r['size']}", r["frames"] or "-",
            r.get("chunk_frames") or ("all" if r["frames"] else "-"), f"{r['params_m']:.2f}", f"{r['mb_fp16']:.1f}",
            f"{r['gflop']:,.1f}", f"{r['flops_ratio']:.2f}",
            f"{med:.3f}" if med else (r.get("skipped") or "-"),
            f"{r['min_s']:.3f}-{r['max_s']:.3f}" if med else "-",
            r.get("repeats", "-"), r.get("peak_mem_mb", "-"),
            (f"{r['speedup']:.2f}x ({r['speedup_best']:.2f}x)" if r.get("speedup_best") else f"{r['speedup']:.2f}x")
            if r.get("speedup") else "-", r["baseline"],
        ]
        if r["dtype"] not in ("-", "fp32") and r.get("compute_dtype") and DTYPES[r["dtype"]] != getattr(
                torch, r["compute_dtype"]):
            cells[2] = f"{r['dtype']}->{r['compute_dtype']}"
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


NARROW_HEAD = ("decoder", "device", "dtype", "size", "frames", "GFLOP", "FLOPs x fewer", "median s", "speed-up", "vs")


def format_narrow(rows: list[dict]) -> str:
    """The terminal's table (fits 100 columns; every column: format_table, --markdown FILE)."""
    cells = []
    for r in rows:
        med = r.get("median_s")
        cells.append([
            r["decoder"], r["device"], r.get("compute_dtype", r["dtype"]) if r["dtype"] != "-" else "-",
            str(r["size"]), str(r["frames"] or "-"), f"{r['gflop']:,.1f}", f"{r['flops_ratio']:.2f}",
            f"{med:.3f}" if med else (r.get("skipped") or "-")[:12], f"{r['speedup']:.2f}x" if r.get("speedup") else "-",
            r["baseline"],
        ])
    widths = [max([len(h)] + [len(c[i]) for c in cells]) for i, h in enumerate(NARROW_HEAD)]

    def line(values) -> str:
        return " ".join(v.ljust(w) if i < 3 or i == len(widths) - 1 else v.rjust(w) for i, (v, w) in enumerate(zip(values, widths))).rstrip()

    return "\n".join([line(NARROW_HEAD), line(["-" * w for w in widths]), *(line(c) for c in cells)])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--_worker"]:  # internal: one CPU row in a fresh process
        return _worker(json.loads(argv[1]))
    args = parse_args(argv)
    rows = run(args)
    if not args.json:
        notes = ["FLOPs: torch FlopCounterMode on the meta device, per decode of the whole batch/clip. "
                 "Speed-up and FLOPs ratio are against the baseline in the last column, same device/dtype/size/frames "
                 "(the baseline decodes whole clips; chunk = frames decoded at once)."]
        if rows and "mem_method" in rows[-1]:
            notes.append(f"peak MB: {rows[-1]['mem_method']}")
        print(f"machine: {machine()}")
        print(format_narrow(rows))
        print("\n".join(textwrap.wrap(" ".join(notes), 100)))
        if args.markdown:
            with open(args.markdown, "w") as f:
                f.write(f"machine: {machine()}\n\n{format_table(rows)}\n\n" + "\n\n".join(notes) + "\n")
            print(f"every column (params, memory, min-max, chunk): {args.markdown}")
        else:
            print("every column (params, memory, min-max, chunk): --markdown FILE")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
