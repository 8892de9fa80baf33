"""Run in every Ray worker process of a latentmill job, before any task (runtime_env's
`worker_process_setup_hook`, set in jobs/local.py `connect_ray`)."""

from __future__ import annotations

import logging

# Ray Train's placement-group cleaner asks the state API whether the training controller lives,
# every few seconds. latentmill starts Ray without the dashboard that serves that API, so every
# check logged a warning: 90 lines in a two-minute training run. Quieting it changes nothing the
# cleaner does: without the API it could not check in the first place.
NOISY_LOGGERS = ("ray.train.v2._internal.execution.controller.placement_group_cleaner",)


def quiet_known_noise() -> None:
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
