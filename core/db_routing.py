"""Reads that may come from a read replica, and everything else from the primary.

With `DATABASE_REPLICA_URL` set (settings: `READ_REPLICA = "replica"`), a read goes to the replica
only when all of these hold:

- the code asked for it, inside `reads_from_replica()`: the finance reports and revenue page, their
  CSV downloads and the transaction listing — reads that decide nothing;
- no transaction is open on the primary: a read inside a transaction (a wallet check, an
  idempotency look-up, a webhook's stored event, every ledger verb) belongs to that transaction;
- the user the read is for has not sent a write request in the last `REPLICA_PIN_SECONDS` (a
  user who just ran an agent or changed a setting sees it in their listing at once:
  read-your-writes; the pin lives in the cache, so several workers need a shared `CACHE_URL`);
  writes made for a user by others (a Stripe webhook's purchase, a staff grant, a queued run
  finishing) reach their listing after the replica's lag;
- the replica answered when the block began (otherwise the primary serves it, logged), within
  `DATABASE_CONNECT_TIMEOUT`.

Everything else — every write, every money verb (they run raw SQL on the primary's connection),
every read outside such a block, the wallet page — goes to the primary.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
from collections.abc import Iterator

from django.conf import settings
from django.core.cache import cache
from django.db import DEFAULT_DB_ALIAS, DatabaseError, connections

logger = logging.getLogger("billing")

_replica_allowed: contextvars.ContextVar[bool] = contextvars.ContextVar("replica_allowed", default=False)


def _pin_key(user_id: int) -> str:
    return f"primary-pin:{user_id}"


def pin_to_primary(user_id: int) -> None:
    """The user wrote something: their reads stay on the primary for REPLICA_PIN_SECONDS. Best
    effort: the write has committed, so a cache that fails here costs a stale listing, not an error."""
    if settings.READ_REPLICA:
        try:
            cache.set(_pin_key(user_id), 1, timeout=settings.REPLICA_PIN_SECONDS)
        except Exception:
            logger.warning("[Billing] Could not pin user %s to the primary", user_id, exc_info=True)


def _pinned(user_id: int) -> bool:
    try:
        return bool(cache.get(_pin_key(user_id)))
    except Exception:
        return True  # unknown: the primary is always right


def _replica_answers(alias: str) -> bool:
    try:
        connections[alias].ensure_connection()
    except DatabaseError as exc:
        logger.warning("[Billing] Read replica unreachable, reading from the primary: %s", exc)
        return False
    return True


@contextlib.contextmanager
def reads_from_replica(*, user_id: int | None = None) -> Iterator[bool]:
    """Inside the block, reads may be served by the replica (see the module's rules); yields
    whether they will be."""
    alias = settings.READ_REPLICA
    allowed = bool(
        alias
        and not connections[DEFAULT_DB_ALIAS].in_atomic_block
        and (user_id is None or not _pinned(user_id))
        and _replica_answers(alias)
    )
    token = _replica_allowed.set(allowed)
    try:
        yield allowed
    finally:
        _replica_allowed.reset(token)


class ReplicaRouter:
    """`DATABASE_ROUTERS` entry: reads to the replica only inside `reads_from_replica()`."""

    def db_for_read(self, model, **hints) -> str:
        if _replica_allowed.get() and not connections[DEFAULT_DB_ALIAS].in_atomic_block:
            return settings.READ_REPLICA
        return DEFAULT_DB_ALIAS

    def db_for_write(self, model, **hints) -> str:
        return DEFAULT_DB_ALIAS

    def allow_relation(self, obj1, obj2, **hints) -> bool:
        return True  # one database, replicated: rows from either are the same rows

    def allow_migrate(self, db: str, app_label: str, **hints) -> bool:
        return db == DEFAULT_DB_ALIAS  # the replica gets its schema by replication


class PinWritersToPrimaryMiddleware:
    """After a request that may have written (any method but GET/HEAD/OPTIONS) by a signed-in
    user, that user's replica-eligible reads go to the primary for REPLICA_PIN_SECONDS. Runs
    after the view, so it sees the user DRF's JWT authentication found."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        if settings.READ_REPLICA and request.method not in ("GET", "HEAD", "OPTIONS"):
            user = getattr(request, "user", None)
            if user is not None and user.is_authenticated:
                pin_to_primary(user.id)
        return response
