"""The live display of a run in the terminal: phase lines from the first second, then a progress bar.

On a TTY it is drawn with `rich` (a bar, and a table of stages redrawn in place, which tqdm's one
line per bar does not give): while the run starts, a spinner names the phase it is in and for how
long (every finished phase stays as a line above); once batches stream, one overall bar (items the
last stage finished, of the plan; committed beside it; a smoothed rate and ETA, pipelines/observe/eta.py)
and one row per stage (done, rate, actors ready/total, utilisation, queue). Elsewhere (logs, CI,
`latentmill logs`) every phase is one plain line, and the progress one plain block every `every_s`
seconds, so a long job leaves a few lines a minute, not a wall of them.

Phases come through logging (pipelines/observe/phases.py): the display is a logging handler while
it is active (`with display:`), and a listener of the run's accounting (update / finish).
"""

from __future__ import annotations

import logging
import sys
import time

from pipelines.observe.eta import eta_s, finishing_stage, run_rate, smoothed_rate
from pipelines.observe.phases import LOGGER_NAME

REFRESH_PER_S = 4


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def snapshot(acc) -> dict:
    """What the display shows, as numbers: overall figures and one row per stage."""
    names = acc.chain_order(acc.stages)
    last = finishing_stage(acc.stage_names or names)
    finished = acc.stages[last].items_out if last in acc.stages else 0
    loads = acc.loads()
    points = acc.timeline + [acc.point(acc.elapsed())]
    rows = []
    for name in names:
        stats, load = acc.stages[name], loads.get(name)
        if load is None:  # the run is over: how many it had at most
            actors = f"{stats.actors_max}" + (" slots" if stats.is_tasks else "")
        elif stats.is_tasks:
            actors = f"{load.actors - load.free_slots}/{load.actors} slots"
        else:
            actors = f"{load.actors}/{max(load.actors, round(load.reserved))}"
        # A stage that has seen every item while the run goes on (a fast read stage): "all", not 0/s.
        complete = acc.status == "running" and acc.to_generate > 0 and stats.items_out >= acc.to_generate
        rows.append({
            "stage": name, "done": stats.items_out, "actors": actors, "complete": complete,
            "rate": None if complete else smoothed_rate(points, name),
            "util": stats.busy_s / stats.actor_s if stats.actor_s > 0 else None,
            "queue": load.queued if load else 0,
        })
    units = acc.units or {}
    return {
        "planned": acc.planned,
        "finished": min(acc.planned, acc.already_committed + finished),
        "committed": acc.already_committed + acc.written,
        "failed": acc.failed_samples,
        "rate": run_rate(acc),
        "eta": eta_s(acc) if acc.status == "running" else 0.0 if acc.status == "finished" else None,
        "elapsed": acc.elapsed(),
        "plural": units.get("plural", "samples"),
        "status": acc.status,
        "rows": rows,
    }


def _rate(value: float | None, complete: bool = False) -> str:
    if complete:
        return "all"  # every item of the run went through: no rate to speak of
    return "-" if value is None else f"{value:.2f}"


def _util(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.0f}%"


def counts(s: dict) -> str:
    percent = 100 * s["finished"] / s["planned"] if s["planned"] else 100.0
    return f"{s['finished']}/{s['planned']} {s['plural']} ({percent:.0f}%)"


def figures(s: dict) -> str:
    failed = f" | {s['failed']} failed" if s["failed"] else ""
    return (f"{s['committed']} committed | {_rate(s['rate'])} {s['plural']}/s | "
            f"elapsed {format_duration(s['elapsed'])} | ETA {format_duration(s['eta'])}{failed}")


def headline(s: dict) -> str:
    return f"{counts(s)} | {figures(s)}"


def plain_lines(s: dict, label: str) -> list[str]:
    """The non-TTY block: the headline, then one line per stage."""
    lines = [f"{label}: {headline(s)}"]
    for r in s["rows"]:
        lines.append(f"  {r['stage']:<8} {r['done']:>7} done {_rate(r['rate'], r['complete']):>7}/s | actors {r['actors']:>9} | "
                     f"util {_util(r['util']):>4} | queued {r['queue']:>3}")
    return lines


def rich_view(s: dict, label: str):
    """The TTY block: a bar with its headline, then the stage table."""
    # lazy: keeps rich out of processes that never call this
    from rich.console import Group
    from rich.progress_bar import ProgressBar
    from rich.table import Table

    top = Table.grid(padding=(0, 1))
    top.add_row(label, ProgressBar(total=max(1, s["planned"]), completed=s["finished"], width=40), counts(s))

    stages = Table(box=None, padding=(0, 1), show_edge=False, header_style="dim")
    for column in ("stage", "done", "rate/s", "actors", "util", "queue"):
        stages.add_column(column, justify="left" if column == "stage" else "right")
    for r in s["rows"]:
        stages.add_row("  " + r["stage"], str(r["done"]), _rate(r["rate"], r["complete"]), r["actors"], _util(r["util"]),
                       str(r["queue"]))
    return Group(top, " " * (len(label) + 1) + figures(s), stages)


class LiveProgress(logging.Handler):
    """Phase lines and the progress of one run. `with display:` shows phases; the run's accounting
    calls update/finish. `verbose`: the phase logger's debug lines too."""

    def __init__(self, label: str, stream=None, tty: bool | None = None, every_s: float | None = None):
        super().__init__(level=logging.INFO)
        self.label = label
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)()) if tty is None else tty
        self.every_s = every_s if every_s is not None else (1 / REFRESH_PER_S if self.tty else 10.0)
        self._last = time.monotonic()  # the first plain block comes after every_s, not at once
        self._phase: str | None = None
        self._phase_since = time.monotonic()
        self._snapshot: dict | None = None
        self._live = None
        self._attached = False

    # -- lifetime ----------------------------------------------------------------------------

    def __enter__(self) -> "LiveProgress":
        self.start()
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is not None and self._live is not None and self._snapshot is None:
            # Failed before any progress: the spinner goes, the error line that follows says why.
            self._phase = None
            self._live.transient = True
        self.stop()

    def start(self) -> None:
        logger = logging.getLogger(LOGGER_NAME)
        if not self._attached:
            logger.addHandler(self)
            logger.setLevel(logging.INFO)
            self._attached = True
        if self.tty and self._live is None:
            # lazy: keeps rich out of processes that never call this
            from rich.console import Console
            from rich.live import Live

            console = Console(file=self.stream, highlight=False, force_terminal=True)
            self._live = Live(get_renderable=self._view, console=console, refresh_per_second=REFRESH_PER_S,
                              transient=False)  # stray prints go above the live block, not through it
            self._live.start()

    def stop(self) -> None:
        """The last frame stays on the screen; nothing is drawn after this."""
        if self._live is not None:
            self._end_phase()
            self._live.stop()
            self._live = None
        if self._attached:
            logging.getLogger(LOGGER_NAME).removeHandler(self)
            self._attached = False

    # -- phases (logging) --------------------------------------------------------------------

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if record.levelno >= logging.WARNING:
            self._print(f"latentmill: warning: {text}", style="yellow")
            return
        self._end_phase()
        self._phase, self._phase_since = text, time.monotonic()
        if not self.tty:
            self._print(f"latentmill: {text}")
        elif self._live is not None:
            self._live.refresh()  # at once, not at the next tick

    def _end_phase(self) -> None:
        """On a TTY a phase stays as a line, with how long it took, once the next one begins."""
        if self.tty and self._phase is not None:
            took = time.monotonic() - self._phase_since
            self._print(f"latentmill: {self._phase}" + (f" ({took:.1f} s)" if took >= 0.5 else ""), style="dim")
        self._phase = None

    def _print(self, text: str, style: str | None = None) -> None:
        if self._live is not None:
            self._live.console.print(text, style=style, soft_wrap=True)
        else:
            self.stream.write(text + "\n")
            self.stream.flush()

    def _view(self):
        # lazy: keeps rich out of processes that never call this
        from rich.spinner import Spinner

        if self._snapshot is not None:
            return rich_view(self._snapshot, self.label)
        if self._phase is not None:
            since = format_duration(time.monotonic() - self._phase_since)
            return Spinner("dots", f"latentmill: {self._phase} {since}")
        return ""

    # -- the run's accounting ----------------------------------------------------------------

    def update(self, acc) -> None:
        now = time.monotonic()
        if now - self._last < self.every_s:
            return
        self._last = now
        if self.tty:
            self.start()
            if self._snapshot is None:
                self._end_phase()
            self._snapshot = snapshot(acc)
        else:
            self._write_block(snapshot(acc), self.label)

    def finish(self, acc) -> None:
        """The run's last frame (TTY) or block (plain), labelled with how it ended."""
        label = f"{self.label} ({acc.status})"
        if not acc.stages:  # nothing ran (nothing to do): no bar to show
            self.stop()
            return
        if self.tty and self._live is not None:
            self._end_phase()
            self._snapshot = snapshot(acc)
            self.label = label
            self._live.refresh()
            self._live.stop()
            self._live = None
        else:
            self._write_block(snapshot(acc), label)
        self.stop()

    def _write_block(self, s: dict, label: str) -> None:
        self.stream.write("\n".join(plain_lines(s, label)) + "\n")
        self.stream.flush()
