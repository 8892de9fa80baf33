"""`latentmill bench scheduler`: the real engine with dozens of logical GPUs and sleeping stages.

The driver, pools, actors, accounting and shard writer are latentmill's own (`run_pipeline` on local
disk); only the models are replaced by pipelines/stages/synthetic.py, which sleeps a profile's
per-item time (jobs/bench/profiles.yaml) and emits small real payloads. Each GPU count runs in its
own process with its own local Ray declaring that many logical GPUs; actors ask for one GPU and a
hundredth of a CPU, so 64 of them fit on a 2-core machine. Per-item times are multiplied by
`--time-scale` so the whole benchmark takes minutes; efficiency is dimensionless.

Reported per profile and GPU count:
  split       GPUs per stage (the best static split for the profile's times, pipelines/autoscale.py)
  ideal       min over stages of actors_i / t_i, and the write stage's CPU bound
              (min(write slots, cores) / measured write seconds per item)
  throughput  the one steady-state rule of jobs/bench/steady.py, for latentmill and Ray Data alike:
              every item's completion time at the sink (latentmill: its shard's commit marker; Ray
              Data: the file its write task wrote), the first and last quarter of the items left
              out, the slope over the rest; a window above the ideal is rejected and listed.
              Start-up (run start to the first item at the sink) and the whole-run rate separately.
              Each system runs the same items `--repeats` times: median (min-max).
  efficiency  throughput / ideal; each stage's utilisation; the driver's CPU seconds per batch and
              per item (process CPU time of the driver over the run, Ray's threads in it included)
  Ray Data    the same stages as `map_batches` actor pools on the same GPUs, then
              `write_webdataset`, configured as a competent user would (`tuned`), the same with the
              ids made in the driver (`from_items`) and at its defaults (jobs/bench/raydata.py says
              each choice and why); `--ray-data` picks some.
`--auto`: for each profile at each GPU count, every static split, then `concurrency: auto` from a
deliberately bad split (the even one, which auto starts from before it has measured anything);
auto / best static. `--memory`: the driver's peak RSS
for a dry run of the scheduler's bookkeeping (instant in-process stages, no Ray) at 100,000 and
10,000,000 samples.
"""

from __future__ import annotations

import argparse
import datetime
import glob
import json
import os
import subprocess
import sys
import tempfile
import time

from jobs.bench.common import (
    STAGE_CPUS,
    WRITE_CPUS,
    WRITE_SLOTS,
    run_in_child,
    steady_fractions,
    steady_rate,
    steady_window,
    synthetic_kwargs,
)
from jobs.bench.memory import memory_dry_run, memory_table
from jobs.bench.raydata import CONFIGURATIONS, run_ray_data
from jobs.bench.sampling import PeriodicSampler
from jobs.bench.steady import SinkRecord, steady_state, summary
from jobs.profiles import read_profiles
from pipelines.autoscale import best_split, split_throughput
from pipelines.scheduler import shards_in_flight

PROFILES_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "profiles.yaml")


def load_profiles(path: str = PROFILES_FILE) -> dict:
    return read_profiles(path)  # the one reader of the format, which `stages.auto_profile` uses too


def scaled_times(profile: dict, time_scale: float) -> dict[str, float]:
    return {name: s["per_item_s"] * time_scale for name, s in profile["stages"].items()}


def ideal_of(split: dict[str, int], times: dict[str, float], write_cpu_s_per_item: float, cores: float) -> dict:
    """The bound the resources allow: GPU stages on their own devices, and the write stage's CPUs."""
    limits = {name: split[name] / times[name] for name in times}
    limits["write"] = min(WRITE_SLOTS, cores) / write_cpu_s_per_item
    set_by = min(limits, key=limits.get)
    return {"items_per_s": limits[set_by], "set_by": set_by, "limits": limits}


class CpuClock(PeriodicSampler):
    """Samples this process's CPU time against the wall clock in a thread, so the driver's CPU
    over any window of the run (the steady window) can be read afterwards."""

    def __init__(self, interval_s: float = 0.1):
        super().__init__(interval_s)
        self.samples: list[tuple[float, float]] = []

    def sample(self) -> None:
        self.samples.append((time.time(), time.process_time()))

    def cpu_between(self, start: float, end: float) -> float:
        def at(t):
            return min(self.samples, key=lambda s: abs(s[0] - t))[1]

        return at(end) - at(start)


def synthetic_shard(shard: int, size: int) -> tuple[list, dict]:
    """The planned samples and the last stage's batch of one shard of synthetic output."""
    # lazy: keeps PIL out of processes that never call this
    from pipelines.stages.synthetic import tiny_png

    samples = [{"key": f"{i:09d}", "index": i, "prompt": "synthetic", "seed": i}
               for i in range(shard * size, (shard + 1) * size)]
    batch = {"keys": [s["key"] for s in samples], "files": [{"png": tiny_png(s["index"], 8)} for s in samples],
             "fields": [{"height": 8, "width": 8}] * size, "timings": {"decode": 0.0}}
    return samples, batch


def write_cpu_per_item(profile: dict, workdir: str, shards: int = 3) -> float:
    """CPU seconds the shard writer spends per item on this machine: whole shards of the synthetic
    payload written here with the real writer, timed in CPU time (not wall time, which other
    processes on a loaded machine would inflate)."""
    # lazy: keeps pyarrow, PIL out of processes that never call this
    from pipelines.sinks.webdataset_writer import write_shard

    size = profile["samples_per_shard"]
    started = None
    for shard in range(shards + 1):  # the first one warms up (imports, first Parquet write)
        if shard == 1:
            started = time.process_time()
        samples, batch = synthetic_shard(shard, size)
        write_shard(workdir, None, f"{shard:05d}", samples, {"job": "bench"}, [], None, (), batch)
    return (time.process_time() - started) / (shards * size)


def warm_write_workers(profile: dict, workdir: str) -> None:
    """Start Ray's task workers for writes (and their imports) before a run, as a long job has them:
    on a fresh local Ray the first writes of a short run would otherwise wait for worker processes
    and then commit in one burst, which says nothing about the steady state."""
    # lazy: keeps ray, pyarrow, PIL out of processes that never call this
    import ray

    from pipelines.sinks.webdataset_writer import write_shard

    remote = ray.remote(write_shard).options(num_cpus=WRITE_CPUS)
    shards = [synthetic_shard(i, profile["samples_per_shard"]) for i in range(2 * WRITE_SLOTS)]
    ray.get([remote.remote(workdir, None, f"{i:05d}", samples, {}, [], None, (), batch)
             for i, (samples, batch) in enumerate(shards)])


# -- latentmill -----------------------------------------------------------------------------------


def build_pipeline(profile: dict, split: dict, url: str, images: int, time_scale: float, latent_shape: tuple,
                   gpus: int | None = None, gpu_share: float = 1.0):
    """A generate-like pipeline whose stages are synthetic. `split`: actors per stage, or "auto";
    `gpus`: the auto stages' GPU budget; `gpu_share`: each actor's num_gpus."""
    # lazy: keeps pyarrow, PIL out of processes that never call this
    from pipelines.config import OutputConfig, StageResources, WriteResources
    from pipelines.pipeline import Pipeline, StageDef
    from pipelines.plan import build_plan
    from pipelines.stages.synthetic import SyntheticStage

    plan = build_plan(["synthetic"], images_per_prompt=1, num_images=images, seed=0,
                      samples_per_shard=profile["samples_per_shard"])
    stages = []
    for name in profile["stages"]:
        concurrency = "auto" if split == "auto" else split[name]
        resources = StageResources(num_gpus=gpu_share, num_cpus=STAGE_CPUS, concurrency=concurrency,
                                   batch_size=profile["stages"][name]["batch_size"])
        kwargs = synthetic_kwargs(profile, name, time_scale, latent_shape)
        stages.append(StageDef(name, SyntheticStage, kwargs, resources))
    return Pipeline(
        name="bench-scheduler", kind="generate", plan=plan, stages=tuple(stages),
        output=OutputConfig(url=url, samples_per_shard=profile["samples_per_shard"]),
        write=WriteResources(num_cpus=WRITE_CPUS, concurrency=WRITE_SLOTS),
        identity={"bench": "scheduler", "images": images}, spec={}, max_retries=0, gpus=gpus,
    )


def commit_events(url: str) -> list[tuple[float, int]]:
    events = []
    for path in glob.glob(os.path.join(url, "shards", "*.done.json")):
        with open(path) as f:
            events.append((os.path.getmtime(path), json.load(f)["samples"]))
    return events


def run_latentmill(profile: dict, split, url: str, images: int, args, gpus: int | None = None) -> dict:
    # lazy: keeps ray, pyarrow, PIL out of processes that never call this
    from pipelines.runner import run_pipeline

    pipeline = build_pipeline(profile, split, url, images, args.time_scale, tuple(args.latent_shape), gpus)
    began, began_wall = time.perf_counter(), time.time()
    with CpuClock() as clock:
        report = run_pipeline(pipeline, progress=False, start_timeout_s=600)
    events = commit_events(url)
    low, high = steady_fractions(in_flight(profile, split, gpus), pipeline.plan.num_shards)
    start, end, items = steady_window(events, low, high)
    stages = report["stages"]
    # Driver CPU in the steady window, per item and per batch event (each stage's batches, the writes).
    driver_cpu = clock.cpu_between(start, end)
    events_per_item = sum(1 / s["batch_size"] for s in profile["stages"].values()) + 1 / profile["samples_per_shard"]
    write = stages.get("write", {})
    return {
        "images": report["generated"],
        "wall_s": time.perf_counter() - began,  # actor start-up and the output's setup included
        "record": SinkRecord.from_groups(began_wall, events),  # every item at its shard's commit
        "planned_shards": pipeline.plan.num_shards,
        "committed_shards": len(events),
        # The in-flight commit window, for --auto (latentmill against itself); comparisons use "steady".
        "steady_items_per_s": steady_rate(events, low, high),
        "steady_commits": [round(low * len(events)), round(high * len(events))],
        "run_items_per_s": report["generated"] / report["stream_s"] if report["stream_s"] else None,
        "stream_s": report["stream_s"],
        "startup_s": report["startup_s"],
        "utilisation": {n: s["utilisation"] for n, s in stages.items()},
        "actors": {n: s["actors"] for n, s in stages.items()},
        "write_wall_s_per_item": write["busy_s"] / write["items"] if write.get("items") else None,
        "driver_cpu_cores": driver_cpu / (end - start),
        "driver_cpu_ms_per_batch": 1000 * driver_cpu / (items * events_per_item),
        "driver_cpu_ms_per_item": 1000 * driver_cpu / items,
        "notes": [n for n in report["notes"] if n.startswith("concurrency auto at ")],
        "converged_items_per_s": converged_rate(report, events) if split == "auto" else None,
    }


def converged_rate(report: dict, events: list[tuple[float, int]]) -> float | None:
    """Steady items/s of an auto run from the moment its pools reached their last split's sizes."""
    final = report["timeline"][-1]["actors"] if report["timeline"] else {}
    started = datetime.datetime.fromisoformat(report["started"]).timestamp()
    settled = next((p["t"] for p in report["timeline"]
                    if all(p["actors"].get(name) == count for name, count in final.items() if name != "write")), None)
    return steady_rate(events, low=0.0, after=started + settled) if settled is not None else None


# -- one GPU count, in its own process with its own Ray -------------------------------------------


def run_child(job: dict) -> dict:
    """Runs in a fresh process: a local Ray with `gpus` logical GPUs, then the runs asked for."""
    # lazy: keeps ray out of processes that never call this
    import ray

    args = argparse.Namespace(**job["args"])
    gpus, profile = job["gpus"], job["profile"]
    ray.init(address="local", num_cpus=args.cpus, num_gpus=gpus, include_dashboard=False, log_to_driver=False,
             logging_level="ERROR")
    times = scaled_times(profile, args.time_scale)
    best = best_split(times, gpus)
    shard = profile["samples_per_shard"]
    # A steady state needs several times the shards in flight: the warm-up quarter (jobs/bench/steady.py)
    # then holds them all. Ray Data runs the same items.
    images = sized_run(split_throughput(best, times), shard, args.seconds, 4 * in_flight(profile, best, gpus))
    workdir = tempfile.mkdtemp(prefix="latentmill-bench-scheduler-", dir=args.workdir)
    write_cpu = write_cpu_per_item(profile, os.path.join(workdir, "write-alone"))
    warm_write_workers(profile, os.path.join(workdir, "write-warm"))
    result = {"profile": job["name"], "gpus": gpus, "images": images, "times": times, "split": best, "runs": {},
              "write_cpu_s_per_item": write_cpu}
    try:
        if job["mode"] == "scale":
            result["ideal"] = ideal_of(best, times, write_cpu, args.cpus)
            result["runs"] = repeated_runs(profile, best, workdir, images, args, result["ideal"]["items_per_s"])
        else:  # auto: every static split, then concurrency auto from a bad split
            names = list(times)
            for first in range(1, gpus):
                split = {names[0]: first, names[1]: gpus - first}
                # Each split sized by its own ideal (a bad split would take minutes at the best one's size),
                # and splits near the best long enough for a steady state.
                near_best = split_throughput(split, times) >= 0.5 * split_throughput(best, times)
                size = sized_run(split_throughput(split, times), shard, args.seconds,
                                 4 * in_flight(profile, split, gpus) if near_best else 8)
                run = run_latentmill(profile, split, os.path.join(workdir, f"static-{first}"), size, args)
                run["ideal"] = ideal_of(split, times, write_cpu, args.cpus)
                run = measured(run, run["ideal"]["items_per_s"])
                run["split"] = split
                result["runs"][f"static {first}/{gpus - first}"] = run
            # Auto runs 4x as long: its re-balances wait for a 5 s cooldown, which a real job of hours
            # never notices but a run of seconds at the fast-forward does.
            auto_images = sized_run(split_throughput(best, times), shard, 4 * args.seconds,
                                    4 * in_flight(profile, best, gpus))
            auto = run_latentmill(profile, "auto", os.path.join(workdir, "auto"), auto_images, args, gpus=gpus)
            result["runs"]["auto"] = measured(auto, ideal_of(best, times, write_cpu, args.cpus)["items_per_s"])
    finally:
        ray.shutdown()
        subprocess.run(["rm", "-rf", workdir], check=False)
    return result


def measured(run: dict, ideal_items_per_s: float) -> dict:
    """The run's figures with its sink record reduced by the one steady-state rule (jobs/bench/steady.py)."""
    record = run.pop("record")
    return {**run, "steady": steady_state(record, ideal_items_per_s)}


def repeated_runs(profile: dict, split: dict, workdir: str, images: int, args, ideal: float) -> dict:
    """Each system `args.repeats` times on the same items, interleaved (latentmill, then each Ray Data
    configuration, then again) so that a change of load on the machine falls on all of them."""
    runs: dict[str, list] = {"latentmill": []}
    for repeat in range(args.repeats):
        url = os.path.join(workdir, f"latentmill-{repeat}")
        runs["latentmill"].append(measured(run_latentmill(profile, split, url, images, args), ideal))
        subprocess.run(["rm", "-rf", url], check=False)
        for configuration in args.ray_data if args.peer else ():
            url = os.path.join(workdir, f"ray-data-{configuration}-{repeat}")
            run = run_ray_data(profile, split, url, images, args, configuration)
            runs.setdefault(f"ray_data {configuration}", []).append(measured(run, ideal))
            subprocess.run(["rm", "-rf", url], check=False)
    return runs


def in_flight(profile: dict, split, gpus: int | None) -> int:
    """The shards the engine keeps active for this split (pipelines/scheduler.py)."""
    actors = gpus if split == "auto" else sum(split.values())
    first = next(iter(profile["stages"].values()))
    return shards_in_flight(actors, first["batch_size"], profile["samples_per_shard"], WRITE_SLOTS)


def sized_run(ideal_items_per_s: float, shard: int, seconds: float, min_shards: int = 24) -> int:
    """Items for about `seconds` of streaming at the ideal rate, in whole shards: at least
    `min_shards`, so the steady window holds enough commits for its slope."""
    shards = max(min_shards, round(ideal_items_per_s * seconds / shard))
    return shards * shard


# -- the parent: children per GPU count, tables ---------------------------------------------------


def _f(value, digits=2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _spread(stat: dict, digits: int = 1) -> str:
    if stat["median"] is None:
        return "-"
    return f"{stat['median']:.{digits}f} ({stat['min']:.{digits}f}-{stat['max']:.{digits}f})"


def system_row(r: dict, system: str, runs: list[dict]) -> str:
    """One system's repeats at one GPU count: median (min-max) of the figures steady.py computed."""
    ideal = r["ideal"]["items_per_s"]
    steady = summary([run["steady"]["items_per_s"] for run in runs])
    efficiency = summary([ratio_of(run["steady"]["items_per_s"], ideal) for run in runs])
    startup = summary([run["steady"]["startup_s"] for run in runs])
    whole = summary([run["steady"]["whole_run_items_per_s"] for run in runs])
    rejected = sum(1 for run in runs if run["steady"]["rejected"])
    if system == "latentmill":
        files = f"{runs[0]['planned_shards']} planned shards of {runs[0]['images']} items"
    else:
        rows = [(run["rows_per_file"]["min"], run["rows_per_file"]["max"]) for run in runs]
        files = (f"{min(run['files'] for run in runs)}-{max(run['files'] for run in runs)} "
                 f"({min(a for a, _ in rows)}-{max(b for _, b in rows)} rows)")
    split = "/".join(str(v) for v in r["split"].values())
    return (f"| {r['profile']} | {r['gpus']} | {split} | {r['images']} | {ideal:.1f} ({r['ideal']['set_by']}) "
            f"| {system} | {len(runs)} ({rejected}) | {_spread(steady)} | {_spread(efficiency, 3)} "
            f"| {_spread(startup, 2)} | {_spread(whole)} | {files} |")


def driver_row(r: dict) -> str:
    runs = r["runs"]["latentmill"]
    med = {k: summary([run[k] for run in runs])["median"]
           for k in ("driver_cpu_cores", "driver_cpu_ms_per_batch", "driver_cpu_ms_per_item")}
    util = " ".join(f"{n} {_f(u)}" for n, u in runs[0]["utilisation"].items() if u is not None)
    return (f"| {r['profile']} | {r['gpus']} | {_f(med['driver_cpu_cores'])} | {_f(med['driver_cpu_ms_per_batch'])} "
            f"| {_f(med['driver_cpu_ms_per_item'])} | {util} |")


def scale_table(results: list[dict]) -> str:
    """Every system's steady rate (the one rule of jobs/bench/steady.py) with its spread over the
    repeats, start-up on its own; then latentmill's driver load; then every rejected window."""
    lines = ["| profile | GPUs | split | items | ideal/s (set by) | system | runs (rejected) | steady/s median (min-max) "
             "| eff. median (min-max) | start-up s median (min-max) | whole run/s median (min-max) | output files |",
             "|" + "---|" * 12]
    lines += [system_row(r, system, runs) for r in results for system, runs in r["runs"].items()]
    lines += ["", "| profile | GPUs | driver CPU cores | driver ms/batch | driver ms/item | utilisation (first run) |",
              "|" + "---|" * 6]
    lines += [driver_row(r) for r in results]
    rejected = [f"- {r['profile']} at {r['gpus']} GPUs, {system} run {i + 1}: {run['steady']['rejected']}"
                for r in results for system, runs in r["runs"].items() for i, run in enumerate(runs)
                if run["steady"]["rejected"]]
    lines += ["", "Rejected windows (not in the medians):"] + (rejected or ["- none"])
    return "\n".join(lines)


def ratio_of(a, b):
    return a / b if a is not None and b else None


def auto_table(results: list[dict]) -> str:
    header = ("| profile | GPUs | best static split | best static/s | auto/s (steady) | auto / best "
              "| auto/s after its last split | that / best | auto decisions |")
    lines = [header, "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        static = {k: v for k, v in r["runs"].items() if k.startswith("static")}
        best_name = max(static, key=lambda k: static[k]["steady_items_per_s"] or 0)
        best, auto = static[best_name]["steady_items_per_s"], r["runs"]["auto"]["steady_items_per_s"]
        converged = r["runs"]["auto"]["converged_items_per_s"]
        lines.append(f"| {r['profile']} | {r['gpus']} | {best_name.split()[1]} | {_f(best, 1)} | {_f(auto, 1)} "
                     f"| {_f(ratio_of(auto, best), 3)} | {_f(converged, 1)} | {_f(ratio_of(converged, best), 3)} "
                     f"| {'; '.join(r['runs']['auto']['notes']) or 'none'} |")
        sweep = ", ".join(f"{k.split()[1]}: {_f(v['steady_items_per_s'], 1)}" for k, v in static.items())
        lines.append(f"| | | every split (steady items/s): {sweep} | | | | | | |")
    return "\n".join(lines)


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="latentmill bench scheduler", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpus", default="8,16,32,64", help="logical GPU counts, comma-separated")
    parser.add_argument("--profile", action="append", help="profile name(s) (default: all in the profiles file)")
    parser.add_argument("--profiles", default=PROFILES_FILE, help="profiles YAML")
    parser.add_argument("--time-scale", type=float, default=0.05,
                        help="multiplies every per-item time (0.05: 20x faster than the profile)")
    parser.add_argument("--seconds", type=float, default=10.0, help="streaming seconds per run at the ideal rate")
    parser.add_argument("--cpus", type=float, default=float(os.cpu_count() or 2), help="CPUs the local Ray declares")
    parser.add_argument("--latent-shape", type=lambda t: [int(x) for x in t.split(",")], default=[4, 8, 8],
                        help="shape of the latents the first stage emits per item (4,128,128 is SDXL 1024)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="runs of each system and configuration per GPU count (median and min-max reported)")
    parser.add_argument("--no-peer", dest="peer", action="store_false", help="skip the Ray Data peer")
    parser.add_argument("--ray-data", type=lambda t: t.split(","), default=list(CONFIGURATIONS),
                        help=f"the Ray Data configurations to run, comma-separated (default: {','.join(CONFIGURATIONS)})")
    parser.add_argument("--auto", action="store_true",
                        help="instead: every static split and concurrency auto (from a bad split) per GPU count")
    parser.add_argument("--memory", action="store_true", help="instead: the driver's peak RSS, 1e5 vs 1e7 samples")
    parser.add_argument("--memory-samples", default="100000,10000000")
    parser.add_argument("--workdir", help="where outputs go while a run lasts (default: the temp folder)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON too")
    parser.add_argument("--record", help="append each GPU count's result to this JSON-lines file as it finishes "
                                         "(a long benchmark keeps what it measured if it is interrupted)")
    parser.add_argument("--tables-from", metavar="RECORD", help="instead: print the tables of a --record file")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv if argv is not None else sys.argv[1:])
    if args.child:
        job = json.loads(args.child)
        if "memory" in job:
            result = memory_dry_run(**job["memory"])
        else:
            result = run_child(job)
        print(json.dumps(result), flush=True)
        return 0
    if args.repeats < 1:
        print(f"error: --repeats must be at least 1, got {args.repeats}", file=sys.stderr)
        return 2
    wrong = [c for c in args.ray_data if c not in CONFIGURATIONS]
    if wrong:
        print(f"error: --ray-data: unknown configuration(s) {wrong}; expected some of {list(CONFIGURATIONS)}",
              file=sys.stderr)
        return 2
    profiles = load_profiles(args.profiles)
    names = args.profile or list(profiles)
    unknown = [n for n in names if n not in profiles]
    if unknown:
        print(f"error: unknown profile(s) {unknown}; {args.profiles} has {list(profiles)}", file=sys.stderr)
        return 2
    if args.memory:
        print(memory_table(profiles[names[0]], [int(n) for n in args.memory_samples.split(",")]))
        return 0
    if args.tables_from:
        return print_tables(read_record(args.tables_from), args)
    started = time.perf_counter()
    results, failed = [], []
    shared = {k: v for k, v in vars(args).items() if k not in ("child", "profile")}
    for name in names:
        for gpus in [int(g) for g in args.gpus.split(",")]:
            job = {"name": name, "profile": profiles[name], "gpus": gpus, "mode": "auto" if args.auto else "scale",
                   "args": shared}
            try:
                result = run_in_child(job)
            except RuntimeError as error:  # one GPU count failing keeps the others' results
                failed.append(f"{name} at {gpus} GPUs")
                print(f"error: {error}", file=sys.stderr, flush=True)
                continue
            results.append(result)
            if args.record:
                with open(args.record, "a") as record:
                    record.write(json.dumps(result) + "\n")
            print(f"done: {name} at {gpus} GPUs ({time.perf_counter() - started:.0f} s)", file=sys.stderr, flush=True)
    print(f"time scale {args.time_scale} (per-item times x {args.time_scale}); {args.cpus:g} CPUs; "
          f"benchmark wall time {time.perf_counter() - started:.0f} s")
    print_tables(results, args)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def read_record(path: str) -> list[dict]:
    with open(path) as record:
        return [json.loads(line) for line in record if line.strip()]


def print_tables(results: list[dict], args) -> int:
    print(auto_table(results) if args.auto else scale_table(results))
    if args.json:
        print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
