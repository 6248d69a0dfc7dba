"""What the billing endpoints do, as plain functions: a view parses its input, calls one of
these and serializes what it returns. Money moves only through `billing.ledger` verbs."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from billing import ledger
from billing.approvals import change_credits
from billing.models import ApprovalStatus, CreditHold, LotCategory
from billing.selectors import wallet_for_user
from core.errors import DomainError
from users.models import User

# How a staff change awaiting approval reports its request's state.
APPROVAL_STATUS_NAMES = {
    ApprovalStatus.PENDING: "pending_approval",
    ApprovalStatus.APPROVED: "approved",
    ApprovalStatus.REJECTED: "rejected",
}


class UserNotFound(DomainError):
    error_code = "USER_NOT_FOUND"


class HoldNotFound(DomainError):
    error_code = "HOLD_NOT_FOUND"


class HoldOwnedByRun(DomainError):
    error_code = "HOLD_OWNED_BY_RUN"


@dataclass(frozen=True)
class StaffCreditOutcome:
    """A staff grant or debit: `completed` (moved now) or waiting for/decided by a second Finance
    user (`pending_approval`, `approved`, `rejected`, with `approval_id`)."""

    status: str
    new_balance: int
    transaction_id: int | None
    approval_id: int | None = None
    success: bool = True  # the request was accepted (what happened is `status`)

    @property
    def awaits_decision(self) -> bool:
        return self.approval_id is not None


@dataclass(frozen=True)
class ShortfallSettlement:
    collected: int
    written_off: int
    still_owed: int
    new_balance: int


@dataclass(frozen=True)
class HoldCaptured:
    hold_id: int
    status: str
    credits_charged: int
    balance_after: int
    transaction_id: int


def require_user(*, user_id: int) -> None:
    if not User.objects.filter(pk=user_id).exists():
        raise UserNotFound("No user with this id.")


def staff_change_credits(
    *,
    user_id: int,
    credits: int,
    reason: str,
    actor_id: int,
    idempotency_key: str | None = None,
    category: str = LotCategory.PROMOTIONAL,
    expires_at: datetime | None = None,
) -> StaffCreditOutcome:
    """A staff grant (`credits` > 0, a lot of `category` expiring at `expires_at`) or debit (< 0)
    for an existing user, through `approvals.change_credits` (at once, or above the threshold as a
    request for approval). Idempotent on `idempotency_key`."""
    require_user(user_id=user_id)
    change = change_credits(
        user_id=user_id,
        amount=credits,
        reason=reason,
        actor_id=actor_id,
        idempotency_key=idempotency_key,
        category=category,
        expires_at=expires_at,
    )
    if change.approval is not None:
        approval = change.approval
        return StaffCreditOutcome(
            status=APPROVAL_STATUS_NAMES[approval.status],
            approval_id=approval.id,
            new_balance=wallet_for_user(user_id=user_id).balance_credits,
            transaction_id=approval.transaction_id,
        )
    result = change.executed
    return StaffCreditOutcome(
        status="completed", new_balance=result.balance_after, transaction_id=result.transaction.id
    )


def settle_user_shortfall(*, user_id: int, reason: str, actor_id: int) -> ShortfallSettlement:
    """`ledger.settle_shortfall` for an existing user, with the balance it leaves."""
    require_user(user_id=user_id)
    result = ledger.settle_shortfall(user_id=user_id, actor_id=actor_id, reason=reason)
    return ShortfallSettlement(
        collected=result.clawed_back,
        written_off=result.shortfall,
        still_owed=result.still_owed,
        new_balance=wallet_for_user(user_id=user_id).balance_credits,
    )


def own_hold(*, user_id: int, hold_id: int) -> CreditHold:
    """The user's hold, or `HoldNotFound` (another user's hold is not found either)."""
    hold = CreditHold.objects.filter(pk=hold_id, wallet__user_id=user_id).first()
    if hold is None:
        raise HoldNotFound("No such hold.")
    return hold


def _own_unclaimed_hold(*, user_id: int, hold_id: int) -> CreditHold:
    """The user's hold, unless an agent run owns it: only the run settles its hold."""
    hold = own_hold(user_id=user_id, hold_id=hold_id)
    if hold.agent_run_id is not None:
        raise HoldOwnedByRun(f"This hold pays for agent run {hold.agent_run_id}; the run captures or releases it.")
    return hold


def capture_own_hold(*, user_id: int, hold_id: int) -> HoldCaptured:
    """Charge the user's pending hold once (`ledger.capture`)."""
    hold = _own_unclaimed_hold(user_id=user_id, hold_id=hold_id)
    result = ledger.capture(hold_id=hold.id)
    return HoldCaptured(
        hold_id=hold.id,
        status="captured",
        credits_charged=-result.transaction.amount,
        balance_after=result.balance_after,
        transaction_id=result.transaction.id,
    )


def release_own_hold(*, user_id: int, hold_id: int) -> CreditHold:
    """Give the user's pending hold back (`ledger.release`)."""
    hold = _own_unclaimed_hold(user_id=user_id, hold_id=hold_id)
    return ledger.release(hold_id=hold.id)
