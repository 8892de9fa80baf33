"""A measurement taken every few tenths of a second in a thread while a benchmark runs."""

from __future__ import annotations

import threading


class PeriodicSampler:
    """Calls `sample()` every `interval_s` from a thread, between `with` entry and exit."""

    def __init__(self, interval_s: float):
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> None:
        raise NotImplementedError

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval_s)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
