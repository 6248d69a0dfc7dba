"""Balance alerts and auto-recharge crossings, decided by the same statements that move credits.

Every change of a wallet's available credits (A = balance − held) recomputes, in the wallet's
own UPDATE or right after it under the same row lock:

- `balance_alert_state`, a function of A alone: 2 when A ≤ 0, 1 when A is below the wallet's
  low-balance threshold (its own, else `BALANCE_LOW_THRESHOLD_CREDITS`), else 0;
- `crossed`, what this change crossed: 1 `balance.low` (0 → 1 or 2), 2 `balance.depleted`
  (→ 2 from 0 or 1), 4 `balance.recovered` (back to 0), 8 an auto-recharge (usage — a charge
  or a hold — leaving A below `recharge_threshold_credits` while `recharge_armed`);
- `recharge_armed`: false from a crossing until A is back at the threshold.

Because the wallet row is locked by the change itself, concurrent debits that cross a threshold
together see the crossing exactly once: one event, one recharge attempt. The events and the
attempt are written by statements of the same plan (`after_steps`), so they exist if and only if
the change committed — as the plan's follow-up, sent only when something was crossed. Credits
coming in, claw-backs, staff debits and expiry never start a recharge (`debit=False`): credits
coming in re-arm it, the others leave it as it was.
"""

from __future__ import annotations

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from billing.ledger.outbox import wallet_event_steps
from billing.ledger.sql import Followup, Step, run_plan
from billing.models import IN_FLIGHT, RechargeStatus, Wallet
from billing.signals import recharge_started

LOW, DEPLETED, RECOVERED, RECHARGE = 1, 2, 4, 8
_EVENTS = (("balance.low", LOW), ("balance.depleted", DEPLETED), ("balance.recovered", RECOVERED))


def _state(available: str) -> str:
    default = int(settings.BALANCE_LOW_THRESHOLD_CREDITS)
    return (
        f"(CASE WHEN {available} <= 0 THEN 2 "
        f"WHEN {available} < COALESCE(low_balance_threshold_credits, {default}) THEN 1 ELSE 0 END)"
    )


def set_sql(available: str, *, debit: bool) -> str:
    """SET assignments recording what a change leaving `available` credits (SQL over the row)
    crossed, for an UPDATE made after the change. `crossed` is assigned first, from the state
    before it is reassigned (MariaDB reads a column assigned earlier in the SET list at its new
    value, SQLite at its old one; placed first, both read the old)."""
    state = _state(available)
    recharge = (
        f" + (CASE WHEN recharge_armed AND recharge_threshold_credits IS NOT NULL "
        f"AND {available} < recharge_threshold_credits THEN {RECHARGE} ELSE 0 END)"
        if debit
        else ""
    )
    crossed = (
        f"(CASE WHEN balance_alert_state = 0 AND {state} >= 1 THEN {LOW} ELSE 0 END)"
        f" + (CASE WHEN balance_alert_state < 2 AND {state} = 2 THEN {DEPLETED} ELSE 0 END)"
        f" + (CASE WHEN balance_alert_state > 0 AND {state} = 0 THEN {RECOVERED} ELSE 0 END){recharge}"
    )
    at_threshold = f"recharge_threshold_credits IS NULL OR {available} >= recharge_threshold_credits"
    # A debit disarms below the threshold; credits coming in only ever re-arm.
    armed = f"({at_threshold})" if debit else f"(recharge_armed OR {at_threshold})"
    return f"crossed = {crossed}, recharge_armed = {armed}, balance_alert_state = {state}"


def watch_step(wallet: str, *, debit: bool) -> Step:
    """For a change already made to the wallet row `wallet` (SQL for its id): record what it crossed."""
    return Step(
        f"UPDATE credit_wallets SET {set_sql('balance_credits - held_credits', debit=debit)} WHERE id = {wallet}",
        must_change_one_row=False,
    )


def followup(wallet: str, *, debit: bool, due: str | None = None) -> Followup:
    """What a change to the wallet row `wallet` (SQL for its id) may need, as its plan's follow-up
    (`billing.ledger.sql.Followup`): due only when the change crossed something — the alert state
    differs from what the available credits now say, or (after a debit) an armed recharge
    threshold was passed, or (after credits came in) a disarmed one is reached again — so a
    change that crossed nothing sends none of it. Then: record the crossing (`watch_step`), the
    balance events, and after a debit the recharge attempt (a step returning its id, or None).

    `due`: SQL that already says so (a variable the plan's own UPDATE of the wallet set from
    `crossing_sql`), instead of reading the wallet row again once the plan's steps are done."""
    condition = due or (
        f"EXISTS (SELECT 1 FROM credit_wallets WHERE id = {wallet} "
        f"AND {crossing_sql('balance_credits - held_credits', debit=debit)})"
    )
    return Followup(
        condition=condition,
        steps=lambda: [watch_step(wallet, debit=debit), *_crossing_steps(wallet, debit=debit)],
    )


def crossing_sql(available: str, *, debit: bool) -> str:
    """Whether a wallet row left with `available` credits (SQL over the row) has crossed something
    (`followup`): its alert state is not what they say, or a recharge threshold was passed (after
    a debit) or reached again (after credits came in). Never NULL."""
    threshold = "recharge_threshold_credits"
    if debit:
        recharge = f"(recharge_armed AND {threshold} IS NOT NULL AND {available} < {threshold})"
    else:
        recharge = f"(NOT recharge_armed AND ({threshold} IS NULL OR {available} >= {threshold}))"
    return f"COALESCE(balance_alert_state <> {_state(available)} OR {recharge}, TRUE)"


def _crossing_steps(wallet: str, *, debit: bool) -> list[Step]:
    payload = (
        "JSON_OBJECT('user_id', w.user_id, 'available_credits', w.balance_credits - w.held_credits, "
        "'balance_credits', w.balance_credits, 'threshold_credits', "
        f"COALESCE(w.low_balance_threshold_credits, {int(settings.BALANCE_LOW_THRESHOLD_CREDITS)}))"
    )
    steps = [
        step
        for event_type, bit in _EVENTS
        for step in wallet_event_steps(event_type, wallet=wallet, payload=payload, where=f"(w.crossed & {bit}) <> 0")
    ]
    return [*steps, recharge_step(wallet)] if debit else steps


def queue_started_recharge(followed: list) -> None:
    """Queue the recharge attempt a debit's follow-up recorded (its rows: the last is the
    attempt's id, or None), once the transaction commits."""
    if followed and followed[-1]:
        queue_recharge_after_commit(followed[-1][0])


def recharge_step(wallet: str) -> Step:
    """Record an auto-recharge attempt for this crossing — unless one is still in flight — and
    return its id (no row: none)."""
    at = transaction.get_connection().ops.adapt_datetimefield_value(timezone.now())
    in_flight = ", ".join(f"'{status.value}'" for status in IN_FLIGHT)
    return Step(
        "INSERT INTO auto_recharge_attempts (wallet_id, user_id, package_id, status, available_credits, currency, "
        "failure_code, failure_reason, created_at) "
        "SELECT w.id, w.user_id, a.package_id, %s, w.balance_credits - w.held_credits, '', '', '', %s "
        "FROM credit_wallets w JOIN auto_recharges a ON a.user_id = w.user_id "
        f"WHERE w.id = {wallet} AND (w.crossed & {RECHARGE}) <> 0 AND a.enabled AND NOT EXISTS "
        f"(SELECT 1 FROM auto_recharge_attempts r WHERE r.wallet_id = w.id AND r.status IN ({in_flight})) "
        "RETURNING id",
        [RechargeStatus.PENDING.value, at],
        must_change_one_row=False,
        returns=True,
        row_optional=True,
    )


def watch(wallet: Wallet, *, debit: bool) -> None:
    """Record what a change to a locked wallet crossed, and act on it, inside the caller's
    transaction (the verbs that lock the wallet with SELECT … FOR UPDATE)."""
    queue_started_recharge(run_plan([], followup(str(int(wallet.pk)), debit=debit)))


def queue_recharge_after_commit(attempt_id: int) -> None:
    transaction.on_commit(lambda: recharge_started.send(sender=Wallet, attempt_id=attempt_id))
