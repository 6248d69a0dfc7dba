"""One whole transaction, run again after a lock-wait timeout or deadlock; `LedgerBusy` when they persist.

On a Galera cluster a transaction that conflicts with one committed on another node is aborted
by certification with the deadlock error (1213), at commit or mid-statement: it is retried the
same way. Those aborts come fast (no lock wait), so the budget allows more attempts than a lock
wait would, spaced by a growing random pause so that writers on different nodes stop colliding.
A write refused by a table's broken trigger cache (`sql.is_broken_trigger_cache`) is retried
once, after the table is reopened."""

from __future__ import annotations

import contextlib
import functools
import logging
import random
import time
from collections.abc import Callable
from typing import Any, TypeVar

from django.conf import settings
from django.db import DatabaseError, Error, InterfaceError, OperationalError, connection, transaction

from billing import metrics
from billing.ledger.errors import LedgerBusy
from billing.ledger.sql import is_broken_trigger_cache, is_connection_error, reopen_trigger_tables

# MySQL/MariaDB error numbers worth retrying: lock wait timeout, deadlock (and Galera's
# certification conflict, reported as a deadlock).
_RETRYABLE_MYSQL_ERRORS = {1205, 1213}
# The budget is the real bound; this only stops a loop of instant failures. Writers on several
# Galera nodes charging one wallet in a closed loop were seen to lose certification 19 times in a
# row (8 processes, 3 nodes, 2 cores), so a conflict alone never ends the retries early.
_MAX_ATTEMPTS = 100
# The pause before attempt n+1 is random in [0, min(_PAUSE_CAP, _PAUSE_BASE * 2**n)] seconds.
_PAUSE_BASE = 0.005
_PAUSE_CAP = 0.25

logger = logging.getLogger("billing")

T = TypeVar("T")


def is_retryable_error(exc: Exception) -> bool:
    """A lock-wait timeout or deadlock (or a broken trigger cache): the whole transaction may
    simply be run again. Inside a caller's transaction a verb reports one as `LedgerBusy` caused
    by it, for the caller (who owns the transaction) to retry."""
    cause = _cause(exc)
    if is_broken_trigger_cache(cause):
        return True
    return isinstance(cause, OperationalError) and exc_code(exc) in _RETRYABLE_MYSQL_ERRORS


def exc_code(exc: BaseException) -> int | None:
    """The database error number behind `exc` (through `LedgerBusy` wrappers), if any."""
    exc = _cause(exc)
    return exc.args[0] if isinstance(exc, Error) and exc.args and isinstance(exc.args[0], int) else None


def _cause(exc: BaseException) -> BaseException:
    while isinstance(exc, LedgerBusy) and exc.__cause__ is not None:
        exc = exc.__cause__
    return exc


def run_with_retries(attempt: Callable[[], T]) -> T:
    """Run one whole transaction, `attempt()`, again after a lock-wait timeout or deadlock when
    we own the transaction (also one a ledger verb inside it reported as `LedgerBusy`), within
    LEDGER_RETRY_BUDGET_SECONDS; `LedgerBusy` (retryable, never a 500) if they persist or the
    connection was lost. Every money verb runs through it, and so do callers (webhooks) whose
    transaction holds several verbs."""
    return _run(attempt, replayable=False)[0]


def run_replayable(attempt: Callable[[bool], T]) -> tuple[T, bool]:
    """`run_with_retries` for an attempt that can tell its own committed run (charge and hold
    replay the row written under their idempotency key; capture and release find the hold
    settled as asked): after a lost answer (its outcome unknown: it may have committed) it is
    run again too, on a fresh connection, and once more even when the budget is spent, so the
    caller learns the outcome rather than a 503. `attempt(answer_lost)` is told whether an
    earlier run's answer was lost; so is the caller (a replay is then most likely the call's own
    first run)."""
    return _run(attempt, replayable=True)


def _run(attempt: Callable[..., T], *, replayable: bool) -> tuple[T, bool]:
    give_up_at = time.monotonic() + settings.LEDGER_RETRY_BUDGET_SECONDS
    answer_lost = False
    reopened = False
    for number in range(1, _MAX_ATTEMPTS + 2):
        began = time.monotonic()
        try:
            return (attempt(answer_lost) if replayable else attempt()), answer_lost
        except (DatabaseError, InterfaceError, LedgerBusy) as exc:
            if isinstance(exc, LedgerBusy) and not is_retryable_error(exc):
                raise
            lost = is_connection_error(exc)
            if not lost and not is_retryable_error(exc):
                raise
            broken_trigger = is_broken_trigger_cache(_cause(exc))
            if connection.in_atomic_block or (connection.connection is not None and not connection.autocommit):
                # An outer transaction owns the locks (and the outcome); only its owner can retry
                # (and reopen a table, which waits for transactions using it: ours too).
                if broken_trigger:
                    raise LedgerBusy("A ledger table must be reopened; retry the request.") from exc
                raise _given_up(lost) from exc
            if broken_trigger:
                # Reopened once per call: refused again after that (another kill, the FLUSH not
                # allowed or timed out, a trigger truly broken), the answer is 503.
                if reopened:
                    raise LedgerBusy("A ledger table could not be reopened; retry the request.") from exc
                reopened = True
                reopen_trigger_tables()
            if lost:
                with contextlib.suppress(DatabaseError):
                    connection.close()
                if not replayable:
                    raise _given_up(lost) from exc
            # After a lock-wait timeout another full lock wait must still fit in the budget; after
            # a deadlock or certification conflict (they come fast) twice what this attempt took.
            took = time.monotonic() - began
            code = exc_code(exc)
            needed = settings.LEDGER_LOCK_WAIT_SECONDS
            if code != 1205:
                needed = min(needed, 2 * took)
            out_of_budget = number >= _MAX_ATTEMPTS or time.monotonic() + needed > give_up_at
            first_loss = lost and not answer_lost  # earns one more run, budget or not
            if out_of_budget and not first_loss:
                raise _given_up(lost or answer_lost) from exc
            answer_lost = answer_lost or lost
            metrics.LEDGER_RETRIES.labels(error=str(code)).inc()
            logger.info("[Billing] Retrying a transaction after error %s (attempt %d took %.2f s)", code, number, took)
            if not out_of_budget:
                time.sleep(random.uniform(0, min(_PAUSE_CAP, _PAUSE_BASE * 2**number)))
    raise AssertionError("unreachable")


def _given_up(lost: bool) -> LedgerBusy:
    """What the caller is told: the outcome is unknown (an answer was lost), or the wallet was busy."""
    if lost:
        return LedgerBusy("The database connection was interrupted; retry the request.")
    return LedgerBusy("The wallet is busy; retry the request.")


def _money_verb(fn: Callable[..., T]) -> Callable[..., T]:
    """Run `fn` in its own transaction (a savepoint inside a caller's), with `run_with_retries`."""

    @functools.wraps(fn)
    def wrapper(**kwargs: Any) -> T:
        def attempt() -> T:
            with transaction.atomic():
                return fn(**kwargs)

        return run_with_retries(attempt)

    return wrapper
