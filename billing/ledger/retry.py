"""One whole transaction, run again after a lock-wait timeout or deadlock; `LedgerBusy` when they persist."""

from __future__ import annotations

import contextlib
import functools
import random
import time
from collections.abc import Callable
from typing import Any, TypeVar

from django.conf import settings
from django.db import DatabaseError, InterfaceError, OperationalError, connection, transaction

from billing.ledger.errors import LedgerBusy
from billing.ledger.sql import is_connection_error

# MySQL/MariaDB error numbers worth retrying: lock wait timeout, deadlock.
_RETRYABLE_MYSQL_ERRORS = {1205, 1213}
_MAX_ATTEMPTS = 5

T = TypeVar("T")


def is_retryable_error(exc: Exception) -> bool:
    """A lock-wait timeout or deadlock: the whole transaction may simply be run again. Inside a
    caller's transaction a verb reports one as `LedgerBusy` caused by it, for the caller (who
    owns the transaction) to retry."""
    while isinstance(exc, LedgerBusy):
        exc = exc.__cause__
    return isinstance(exc, OperationalError) and bool(exc.args) and exc.args[0] in _RETRYABLE_MYSQL_ERRORS


def run_with_retries(attempt: Callable[[], T]) -> T:
    """Run one whole transaction, `attempt()`, again after a lock-wait timeout or deadlock when
    we own the transaction (also one a ledger verb inside it reported as `LedgerBusy`), within
    LEDGER_RETRY_BUDGET_SECONDS; `LedgerBusy` (retryable, never a 500) if they persist or the
    connection was lost. Every money verb runs through it, and so do callers (webhooks) whose
    transaction holds several verbs."""
    give_up_at = time.monotonic() + settings.LEDGER_RETRY_BUDGET_SECONDS
    for number in range(1, _MAX_ATTEMPTS + 1):
        try:
            return attempt()
        except (OperationalError, InterfaceError, LedgerBusy) as exc:
            if isinstance(exc, LedgerBusy) and not is_retryable_error(exc):
                raise
            if is_connection_error(exc):
                if not connection.in_atomic_block:
                    with contextlib.suppress(DatabaseError):
                        connection.close()
                raise LedgerBusy("The database connection was interrupted; retry the request.") from exc
            if not is_retryable_error(exc):
                raise
            if connection.in_atomic_block:
                # An outer transaction owns the locks; only its owner can retry.
                raise LedgerBusy("The wallet is busy; retry the request.") from exc
            # Another full lock wait must still fit in the budget.
            if number == _MAX_ATTEMPTS or time.monotonic() + settings.LEDGER_LOCK_WAIT_SECONDS > give_up_at:
                raise LedgerBusy("The wallet is busy; retry the request.") from exc
            time.sleep(random.uniform(0, 0.02 * number))
    raise AssertionError("unreachable")


def _money_verb(fn: Callable[..., T]) -> Callable[..., T]:
    """Run `fn` in its own transaction (a savepoint inside a caller's), with `run_with_retries`."""

    @functools.wraps(fn)
    def wrapper(**kwargs: Any) -> T:
        def attempt() -> T:
            with transaction.atomic():
                return fn(**kwargs)

        return run_with_retries(attempt)

    return wrapper
