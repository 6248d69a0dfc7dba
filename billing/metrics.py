"""Prometheus metrics for the ledger and the Stripe webhooks (served by `core.api.metrics_view`)."""

import functools
import time
from contextlib import contextmanager

from prometheus_client import Counter, Histogram

CREDITS = Counter(
    "ledger_credits_total",
    "Credits moved by the ledger, by transaction kind and agent (charges) — always counted positive.",
    ["kind", "agent_id"],
)
REFUSALS = Counter("ledger_insufficient_credit_refusals_total", "Requests refused for lack of credits.", ["reason"])
WEBHOOK_EVENTS = Counter(
    "stripe_webhook_events_total", "Stripe webhook deliveries by event type and outcome.", ["type", "status"]
)
LEDGER_RETRIES = Counter(
    "ledger_transaction_retries_total",
    "Money transactions run again after a deadlock or Galera certification conflict (1213) or a lock wait (1205).",
    ["error"],
)
FAILED_PAYMENTS = Counter("stripe_failed_payments_total", "Checkout sessions whose payment failed.")
CHARGE_SECONDS = Histogram(
    "ledger_charge_seconds",
    "Time to move credits for a charge or capture (one locked transaction).",
    ["verb"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)


# A labelled child is created once and kept by its metric, so the hot paths keep a reference per
# label set instead of looking it up by keyword on every charge.
@functools.lru_cache(maxsize=1024)
def credits(kind: str, agent_id: str):
    return CREDITS.labels(kind=kind, agent_id=agent_id)


@functools.lru_cache(maxsize=64)
def _charge_seconds(verb: str):
    return CHARGE_SECONDS.labels(verb=verb)


@contextmanager
def timed(verb: str):
    started = time.perf_counter()
    try:
        yield
    finally:
        _charge_seconds(verb).observe(time.perf_counter() - started)
