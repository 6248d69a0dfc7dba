"""Benchmark settings: the project's own, plus django-hordak (bench-only) and an empty endpoint.

django-hordak and its dependencies come from `bench/requirements.txt`; the project never imports them.
"""

import os
from importlib.util import find_spec

from config.settings import *  # noqa: F403
from config.settings import INSTALLED_APPS

HORDAK_INSTALLED = find_spec("hordak") is not None
if HORDAK_INSTALLED:
    INSTALLED_APPS = [*INSTALLED_APPS, "mptt", "djmoney", "hordak"]
    DEFAULT_CURRENCY = "EUR"
    CURRENCIES = ["EUR"]

ROOT_URLCONF = "bench.urls"

# The benchmark's processes keep one connection each for the whole run, as production's workers do
# with CONN_MAX_AGE=60: the ledger's plans run stored there (BILLING_STORED_PLANS=false to compare).
BILLING_STORED_PLANS = env.bool("BILLING_STORED_PLANS", default=True)  # noqa: F405

# The runbook's log lines are still formatted and written on every charge (their cost is part of
# ours), but to /dev/null, so that a benchmark's output stays readable and no terminal is timed.
LOGGING = {
    **LOGGING,  # noqa: F405
    "handlers": {"console": {**LOGGING["handlers"]["console"], "stream": open(os.devnull, "w")}},  # noqa: F405, SIM115
}
