"""train-decoder's progress on the driver: a bar (step/total, loss, samples/s, ETA, last checkpoint)
and one line per evaluation, instead of the workers' prints and Ray Train's chatter.

Rank 0 puts small events on a Ray queue (`ray.util.queue.Queue`, an actor) that the driver drains in
a thread: {"kind": "step", step, steps, loss, images_per_s}, {"kind": "checkpoint", step},
{"kind": "evaluating", samples}. A full queue drops an event rather than slow training down.
The ETA is the remaining steps at an exponentially weighted step rate (pipelines/observe/eta.py's
smoothing), measured from the second step reported: the first includes model and data start-up.
"""

from __future__ import annotations

import math
import sys
import threading
import time

from pipelines.observe.progress import REFRESH_PER_S, format_duration

SMOOTHING_S = 60.0
PLAIN_EVERY_S = 10.0


def tell(queue, event: dict) -> None:
    """Worker side: hand the driver one event, never waiting for it."""
    if queue is None:
        return
    try:
        queue.put_nowait(event)
    except Exception:  # full, or the driver is gone: progress is not worth stopping training for
        pass


class StepRate:
    """Steps/s, exponentially weighted over time (time constant SMOOTHING_S)."""

    def __init__(self):
        self.steps = self.seconds = 0.0
        self._last: tuple[float, int] | None = None

    def add(self, now: float, step: int) -> None:
        if self._last is not None and now > self._last[0]:
            span = now - self._last[0]
            decay = math.exp(-span / SMOOTHING_S)
            self.steps = self.steps * decay + (step - self._last[1])
            self.seconds = self.seconds * decay + span
        self._last = (now, step)

    def rate(self) -> float | None:
        return self.steps / self.seconds if self.seconds > 0 else None


class TrainDisplay:
    """Drains the queue in a thread; a rich bar on a terminal, a plain line every 10 s elsewhere."""

    def __init__(self, queue, steps: int, label: str, stream=None):
        self.queue, self.steps, self.label = queue, steps, label
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.state = {"step": 0, "loss": None, "images_per_s": None, "checkpoint": None}
        self.rate = StepRate()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._drain, name="train-progress", daemon=True)
        self._live = None
        self._last_plain = time.monotonic()

    def __enter__(self) -> "TrainDisplay":
        if self.tty:
            # lazy: keeps rich out of processes that never call this
            from rich.console import Console
            from rich.live import Live

            self._live = Live(get_renderable=self._view, console=Console(file=self.stream, force_terminal=True),
                              refresh_per_second=REFRESH_PER_S, transient=False)
            self._live.start()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._drain_now()
        if self._live is not None:
            self._live.refresh()
            self._live.stop()
        elif self.state["step"]:
            self._write(self.line())

    def _drain(self) -> None:
        while not self._stop.is_set():
            self._drain_now(block_s=0.5)
            if not self.tty and time.monotonic() - self._last_plain >= PLAIN_EVERY_S and self.state["step"]:
                self._last_plain = time.monotonic()
                self._write(self.line())

    def _drain_now(self, block_s: float = 0.0) -> None:
        try:
            events = self.queue.get_nowait_batch(self.queue.size()) if self.queue.size() else []
        except Exception:  # the queue actor went away with the cluster
            events = []
        for event in events:
            self.on_event(event, time.monotonic())
        if not events and block_s:
            self._stop.wait(block_s)

    def on_event(self, event: dict, now: float) -> None:
        kind = event.get("kind")
        if kind == "step":
            self.rate.add(now, event["step"])  # the first only starts the clock: it includes start-up
            self.state.update(step=event["step"], loss=event["loss"], images_per_s=event["images_per_s"])
        elif kind == "checkpoint":
            self.state["checkpoint"] = event["step"]
        elif kind == "evaluating":
            self._print(f"latentmill: training done; evaluating the decoder on {event['samples']} held-out samples")

    def eta_s(self) -> float | None:
        rate = self.rate.rate()
        return (self.steps - self.state["step"]) / rate if rate else None

    def figures(self) -> str:
        s = self.state
        loss = "-" if s["loss"] is None else f"{s['loss']:.4f}"
        speed = "-" if s["images_per_s"] is None else f"{s['images_per_s']:.1f}"
        checkpoint = "none yet" if s["checkpoint"] is None else f"step {s['checkpoint']}"
        return (f"loss {loss} | {speed} samples/s | ETA {format_duration(self.eta_s())} | "
                f"last checkpoint {checkpoint}")

    def line(self) -> str:
        return f"{self.label}: step {self.state['step']}/{self.steps} | {self.figures()}"

    def _view(self):
        # lazy: keeps rich out of processes that never call this
        from rich.console import Group
        from rich.progress_bar import ProgressBar
        from rich.table import Table

        top = Table.grid(padding=(0, 1))
        top.add_row(self.label, ProgressBar(total=max(1, self.steps), completed=self.state["step"], width=40),
                    f"step {self.state['step']}/{self.steps}")
        return Group(top, " " * (len(self.label) + 1) + self.figures())

    def _print(self, text: str) -> None:
        if self._live is not None:
            self._live.console.print(text, soft_wrap=True)
        else:
            self._write(text)

    def _write(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()
