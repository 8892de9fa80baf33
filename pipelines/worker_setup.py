"""Set-up of latentmill's Ray worker processes: a hook run in every one before any task
(runtime_env's `worker_process_setup_hook`, set in jobs/local.py `connect_ray`), and the collector
pause that stage actors and training workers load their models under."""

from __future__ import annotations

import gc
import logging
from contextlib import contextmanager

# Ray Train's placement-group cleaner asks the state API whether the training controller lives,
# every few seconds. latentmill starts Ray without the dashboard that serves that API, so every
# check logged a warning: 90 lines in a two-minute training run. Quieting it changes nothing the
# cleaner does: without the API it could not check in the first place.
NOISY_LOGGERS = ("ray.train.v2._internal.execution.controller.placement_group_cleaner",)


def quiet_known_noise() -> None:
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


@contextmanager
def collector_paused():
    """Build a stage (or a training worker's models) with Python's cyclic garbage collector off.

    Importing diffusers and transformers creates about a million long-lived objects, and the
    collector rescans them over and over as they pile up: a quarter of a stage actor's start-up
    CPU (8.4 s -> 6.5 s measured on 2 cores). What is made here lives as long as the process (modules,
    weights; temporaries are freed by reference counting), so afterwards it is frozen out of the
    collector's generations, and later collections skip it too.
    """
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        gc.enable()
