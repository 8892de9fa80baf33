"""Live progress in the terminal: one block (overall, then one line per stage).

On a TTY the block is redrawn in place twice a second; otherwise (logs, CI) it is printed as plain
lines every `every_s` seconds, so a long job leaves a few lines a minute, not a wall of them.
"""

from __future__ import annotations

import sys
import time

from pipelines.observe.eta import eta_s

RATE_WINDOW_S = 30.0  # per-stage rates are over the last half minute


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def recent_rates(timeline: list[dict], now_t: float, items: dict[str, int]) -> dict[str, float]:
    """Items/s per stage over the last RATE_WINDOW_S, from the accounting's timeline."""
    if not timeline:
        return {}
    base = timeline[0]
    for point in reversed(timeline):
        if now_t - point["t"] >= RATE_WINDOW_S:
            base = point
            break
    span = now_t - base["t"]
    if span <= 0:
        return {}
    return {name: (count - base["items"].get(name, 0)) / span for name, count in items.items()}


def render(acc, label: str) -> list[str]:
    elapsed = acc.elapsed()
    done = acc.already_committed + acc.written
    percent = 100 * done / acc.planned if acc.planned else 100.0
    rate = acc.written / elapsed if elapsed > 0 else 0.0
    eta = eta_s(acc) if acc.status == "running" else 0.0
    many = acc.units.get("plural", "samples")
    failed = f" | {acc.failed_samples} failed" if getattr(acc, "failed_samples", 0) else ""
    lines = [
        f"{label}: {done}/{acc.planned} committed ({percent:.0f}%) | {rate:.2f} {many}/s | "
        f"elapsed {format_duration(elapsed)} | ETA {format_duration(eta)}{failed}"
    ]
    loads = acc.loads()
    rates = recent_rates(acc.timeline, elapsed, {n: s.items_out for n, s in acc.stages.items()})
    for name, stats in acc.stages.items():
        load = loads.get(name)
        util = f"{100 * stats.busy_s / stats.actor_s:3.0f}%" if stats.actor_s > 0 else "  -"
        lines.append(
            f"  {name:<8} {stats.items_out:>7} done {rates.get(name, 0.0):7.2f}/s | "
            f"{'slots' if stats.is_tasks else 'actors'} {load.actors if load else 0:>2} | util {util} | "
            f"queued {load.queued if load else 0:>3} | in flight {stats.items_in - stats.items_out:>4}"
        )
    return lines


class LiveProgress:
    def __init__(self, label: str, stream=None, tty: bool | None = None, every_s: float | None = None):
        self.label = label
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)()) if tty is None else tty
        self.every_s = every_s if every_s is not None else (0.5 if self.tty else 10.0)
        self._last = time.monotonic()  # the first plain line comes after every_s, not at once
        self._drawn = 0

    def update(self, acc) -> None:
        now = time.monotonic()
        if now - self._last >= self.every_s:
            self._last = now
            self._draw(render(acc, self.label))

    def finish(self, acc) -> None:
        label = f"{self.label} ({acc.status})"
        self._draw(render(acc, label))
        if self.tty:
            self._drawn = 0

    def _draw(self, lines: list[str]) -> None:
        if self.tty:
            # Back to the top of the previous block, then overwrite each line (clearing its rest).
            up = f"\x1b[{self._drawn}F" if self._drawn else ""
            self.stream.write(up + "".join(f"\x1b[2K{line}\n" for line in lines))
            self._drawn = len(lines)
        else:
            self.stream.write("\n".join(lines) + "\n")
        self.stream.flush()
