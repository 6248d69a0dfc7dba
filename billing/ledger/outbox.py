"""Events as statements of a ledger plan (the outbox): written in the same transaction as the
change that causes them, so an event exists if and only if that change committed.

An event is one `outbox_events` row and one `webhook_deliveries` row per active endpoint that
wants its type (chosen in SQL: no round trip). `billing.events` delivers them. Events a user is
told about by e-mail too (`EMAILED_TYPES`) are marked `email_pending` for the e-mail sweep.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from django.core.serializers.json import DjangoJSONEncoder
from django.db import transaction
from django.utils import timezone

from billing.ledger.sql import Step

EVENT_TYPES = (
    "balance.low",
    "balance.depleted",
    "balance.recovered",
    "purchase.completed",
    "purchase.refunded",
    "shortfall.opened",
    "auto_recharge.succeeded",
    "auto_recharge.failed",
    "auto_recharge.disabled",
    "agent_run.succeeded",
    "agent_run.failed",
)
EMAILED_TYPES = ("balance.low", "auto_recharge.failed", "auto_recharge.disabled")

_INSERT_EVENT = "INSERT INTO outbox_events (event_id, type, payload, user_id, created_at, email_pending, emailed_at) "
_INSERT_DELIVERIES = (
    "INSERT INTO webhook_deliveries (event_id, endpoint_id, status, attempts, next_attempt_at, "
    "last_status_code, last_error, delivered_at, created_at) "
    "SELECT o.id, e.id, 'pending', 0, %s, NULL, '', NULL, %s FROM outbox_events o, webhook_endpoints e "
    "WHERE o.event_id = %s AND e.is_active AND (e.event_types = '[]' OR e.event_types LIKE %s)"
)


def _check(event_type: str) -> None:
    if event_type not in EVENT_TYPES:
        raise ValueError(f"Unknown event type {event_type!r}.")


def _now() -> Any:
    return transaction.get_connection().ops.adapt_datetimefield_value(timezone.now())


def _deliveries(event_id: str, event_type: str, at: Any) -> Step:
    return Step(_INSERT_DELIVERIES, [at, at, event_id, f'%"{event_type}"%'], must_change_one_row=False)


def event_steps(event_type: str, data: dict[str, Any], *, user_id: int | None = None) -> tuple[list[Step], str]:
    """The statements recording `event_type` with `data`, and the event's id."""
    _check(event_type)
    event_id, at = f"msg_{uuid.uuid4().hex}", _now()
    payload = json.dumps(data, cls=DjangoJSONEncoder)
    emailed = event_type in EMAILED_TYPES
    return [
        Step(
            _INSERT_EVENT + "VALUES (%s, %s, %s, %s, %s, %s, NULL)",
            [event_id, event_type, payload, user_id, at, emailed],
        ),
        _deliveries(event_id, event_type, at),
    ], event_id


def wallet_event_steps(event_type: str, *, wallet: str, payload: str, where: str) -> list[Step]:
    """The statements recording `event_type` for the wallet row `wallet` (SQL, e.g. a subquery
    for its id) when `where` (SQL over the wallet row `w`) holds, with the JSON object `payload`
    (SQL over `w`) as its data: for events the plan decides itself, such as a balance crossing."""
    _check(event_type)
    event_id, at = f"msg_{uuid.uuid4().hex}", _now()
    return [
        Step(
            _INSERT_EVENT + f"SELECT %s, %s, {payload}, w.user_id, %s, %s, NULL FROM credit_wallets w "
            f"WHERE w.id = {wallet} AND {where}",
            [event_id, event_type, at, event_type in EMAILED_TYPES],
            must_change_one_row=False,
        ),
        _deliveries(event_id, event_type, at),
    ]
