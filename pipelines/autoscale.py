"""`concurrency: auto`: split a GPU budget between GPU stages by their measured per-item times.

A chain of stages on their own devices runs at the pace of its slowest stage, min_i(n_i / t_i)
(n_i actors with one GPU each, t_i seconds per item on one of them). The split that maximises it
is found by giving GPUs one at a time to the stage that is slowest so far (exact for this
objective: the minimum can only rise by feeding the current minimum). Per-item times are measured
while the job runs, over the last batches of each stage, so the first decision comes after a short
warm-up and later ones follow drift (a decoder that slows down on some prompts, say).

The first split, before anything is measured, is even, or the best split for a profile's per-item
times when the job names one (`StartingTimes`: `latentmill bench gpu` measures them on real GPUs),
so a job whose stages differ tenfold does not spend its warm-up on the wrong split.

Moving a GPU is not free (an actor retires after its calls, another loads its model), so a new
split is taken only when it promises `min_gain` more throughput than the current one, and not
sooner than `cooldown_s` after the last change. Co-location (a light stage sharing the heavy
stage's GPUs, e.g. `num_gpus: 0.25`) is evaluated and logged with its predicted gain; it is not
applied by the engine (see `Decision.colocation`).

Everything here is plain Python (no Ray): the scheduler feeds it finished batches and asks it for
decisions (pipelines/scheduler.py), and unit tests drive it directly.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from pipelines.errors import SchedulingError


def best_split(per_item_s: dict[str, float], gpus: int, minimum: int = 1) -> dict[str, int]:
    """Whole GPUs per stage maximising min_i(n_i / t_i), every stage getting at least `minimum`."""
    if gpus < minimum * len(per_item_s):
        raise ValueError(f"{gpus} GPUs cannot give {len(per_item_s)} stages {minimum} each")
    split = {name: minimum for name in per_item_s}
    for _ in range(gpus - minimum * len(per_item_s)):
        slowest = min(split, key=lambda name: split[name] / per_item_s[name])
        split[slowest] += 1
    return split


def split_throughput(split: dict[str, int], per_item_s: dict[str, float]) -> float:
    """Items/s of a chain whose stages run on their own GPUs: the slowest stage sets the pace."""
    return min(split[name] / per_item_s[name] for name in per_item_s)


def colocated_throughput(per_item_s: dict[str, float], gpus: int, sharing_efficiency: float = 0.9) -> float:
    """Items/s if every GPU time-shares all stages: each item needs sum_i t_i GPU-seconds.

    `sharing_efficiency`: the fraction of that ideal kept when two models contend for one device
    (memory, kernels interleaving); an assumption, not a measurement.
    """
    return sharing_efficiency * gpus / sum(per_item_s.values())


@dataclass(frozen=True)
class StartingTimes:
    """Seconds per item on one GPU, per stage, to take the first split from, and where they come
    from ("profile sdxl-1024-vae in jobs/bench/profiles.gpu.yaml"); measured times take over after warm-up."""

    per_item_s: dict[str, float]
    source: str

    def __post_init__(self):
        if not self.per_item_s or min(self.per_item_s.values()) <= 0:
            raise ValueError(f"starting times must be positive seconds per item, got {self.per_item_s}")


@dataclass(frozen=True)
class Decision:
    at_s: float  # seconds since the rebalancer started
    split: dict[str, int]
    previous: dict[str, int]
    per_item_s: dict[str, float]
    predicted: float  # items/s of `split` at the measured times
    previous_predicted: float
    colocation: float  # items/s predicted for co-location (evaluated, not applied)
    reason: str

    def describe(self) -> str:
        times = ", ".join(f"{n} {1000 * t:.1f} ms/item" for n, t in self.per_item_s.items())
        split = ", ".join(f"{n} {k}" for n, k in self.split.items())
        before = ", ".join(f"{n} {k}" for n, k in self.previous.items())
        text = (f"concurrency auto at {self.at_s:.1f} s: GPUs split {split} (was {before}) {self.reason}; measured "
                f"{times}; predicted {self.predicted:.2f} items/s (was {self.previous_predicted:.2f})")
        if self.colocation > self.predicted:
            text += (f"; co-locating all stages on every GPU would predict {self.colocation:.2f} items/s "
                     "(not applied: co-location is evaluated only)")
        return text


@dataclass
class GpuRebalancer:
    """Decides the GPU split of the `stages` (those with `concurrency: auto`) from measured times.

    `record(stage, items, busy_s)` after every finished batch; `decide(now, current)` once per
    driver-loop turn returns a Decision when the split should change, else None.
    """

    stages: tuple[str, ...]
    slots: int  # actors to split (GPUs, when each actor holds one)
    start: StartingTimes | None = None  # the first split's times; None: an even first split
    warmup_batches: int = 3  # batches per stage measured before the first decision
    window: int = 32  # batches per stage the per-item time is measured over
    min_gain: float = 0.05
    cooldown_s: float = 5.0
    decisions: list[Decision] = field(default_factory=list)
    _batches: dict = field(default_factory=dict)
    _started: float | None = None
    _last_change: float | None = None

    def __post_init__(self):
        if self.slots < len(self.stages):
            raise ValueError(f"concurrency auto: {self.slots} actors cannot give each of {len(self.stages)} stages one")
        if self.start is not None and set(self.stages) - set(self.start.per_item_s):
            missing = ", ".join(sorted(set(self.stages) - set(self.start.per_item_s)))
            raise ValueError(f"concurrency auto: {self.start.source} has no time for stage(s) {missing}")
        self._batches = {name: deque(maxlen=self.window) for name in self.stages}

    def initial_split(self) -> dict[str, int]:
        """Before anything is measured: the best split for the starting times, else as even as the
        GPUs allow (the first decision after warm-up corrects either)."""
        times = self.start.per_item_s if self.start is not None else {}
        return best_split({name: times.get(name, 1.0) for name in self.stages}, self.slots)

    def describe_start(self) -> str:
        """The phase line / report note saying the first split and where it came from."""
        split = self.initial_split()
        counts = "/".join(str(split[name]) for name in self.stages)
        text = f"concurrency auto: starting split {counts} ({'/'.join(self.stages)}) of {self.slots} actors"
        if self.start is None:
            return text + ", even: nothing measured yet (stages.auto_profile starts from measured times)"
        times = ", ".join(f"{n} {1000 * self.start.per_item_s[n]:.1f} ms/item" for n in self.stages)
        return f"{text} from {self.start.source} ({times}); measured times take over after warm-up"

    def record(self, stage: str, items: int, busy_s: float, warm: bool = True) -> None:
        """`warm`: False for an actor's first batch, which carries its cold start (lazy imports and
        caches) and is not counted: with it, the benchmark's decode stage measured 4.8 ms/item over
        its first batches against 3.1 later, and the first split came out one GPU short of the best."""
        if stage in self._batches and items > 0 and warm:
            self._batches[stage].append((items, busy_s))

    def per_item_s(self) -> dict[str, float] | None:
        """Measured seconds per item on one actor, per stage; None until every stage is warm."""
        if any(len(b) < self.warmup_batches for b in self._batches.values()):
            return None
        return {name: sum(s for _, s in b) / sum(n for n, _ in b) for name, b in self._batches.items()}

    def decide(self, now: float, current: dict[str, int]) -> Decision | None:
        if self._started is None:
            self._started = now
        if self._last_change is not None and now - self._last_change < self.cooldown_s:
            return None
        times = self.per_item_s()
        if times is None or min(times.values()) <= 0:
            return None
        split = best_split(times, self.slots)
        predicted, now_predicted = split_throughput(split, times), split_throughput(current, times)
        if split == current or predicted < now_predicted * (1 + self.min_gain):
            return None
        reason = "after warm-up" if not self.decisions else "as measured rates drifted"
        decision = Decision(round(now - self._started, 3), split, dict(current), times, predicted, now_predicted,
                            colocated_throughput(times, self.slots), reason)
        self.decisions.append(decision)
        self._last_change = now
        return decision


def rebalancer_for(stages, gpus: float | None, cluster_gpus: float,
                   start: StartingTimes | None = None) -> GpuRebalancer | None:
    """The rebalancer of a chain's `concurrency: auto` stages (None when it has none).

    `stages`: the chain's StageDefs; `gpus`: the spec's `stages.gpus` budget, else the cluster's
    GPUs; `start`: the times of the first split (None: even). The split is in actors: each holds
    its stage's `num_gpus` (one by default; 0.5 puts two actors on a GPU), the same for every auto stage.
    """
    auto = [s for s in stages if s.resources.concurrency == "auto"]
    if not auto:
        return None
    names = tuple(s.name for s in auto)
    shares = {s.resources.gpus_per_actor(cluster_gpus > 0) for s in auto}
    if len(shares) > 1:
        raise SchedulingError(f"concurrency auto: stages {', '.join(names)} must ask for the same num_gpus per actor "
                              f"(they ask for {sorted(shares)})")
    budget = gpus if gpus is not None else cluster_gpus
    share = shares.pop()
    actors = int(budget / share + 1e-9) if share > 0 else int(budget)
    if actors < len(auto):
        raise SchedulingError(
            f"concurrency auto splits GPUs between {', '.join(names)}, but {budget:g} GPUs are available "
            f"({'stages.gpus' if gpus is not None else 'the cluster'}) for actors of num_gpus={share:g}; "
            f"set stages.gpus to give each stage an actor, or give those stages a number of actors"
        )
    return GpuRebalancer(names, actors, start=start)
