"""What the verbs return."""

from __future__ import annotations

from dataclasses import dataclass

from billing.models import CreditHold, CreditTransaction


@dataclass(frozen=True)
class LedgerResult:
    transaction: CreditTransaction
    replayed: bool = False

    @property
    def balance_after(self) -> int:
        return self.transaction.balance_after


@dataclass(frozen=True)
class ClawbackResult:
    transaction: CreditTransaction | None
    clawed_back: int
    shortfall: int
    still_owed: int = 0


@dataclass(frozen=True)
class HoldResult:
    hold: CreditHold
    replayed: bool = False


@dataclass(frozen=True)
class RestoreResult:
    transaction: CreditTransaction | None
    restored: int  # credits given back to the balance
    cancelled: int  # credits no longer owed (open shortfall cancelled)


@dataclass(frozen=True)
class Captured(LedgerResult):
    user_id: int = 0
