"""The ledger's refusals: plain exceptions with an error code and the figures a caller can show.
They know nothing of HTTP; `core.errors` maps them to status codes in one table."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from core.errors import DomainError


class LedgerError(DomainError):
    """A refusal the caller can explain to the user (`core.errors` answers it over HTTP)."""

    error_code = "LEDGER_ERROR"


class InsufficientCredits(LedgerError):
    error_code = "BILLING_INSUFFICIENT_CREDITS"

    def __init__(self, *, required: int, available: int):
        super().__init__(f"This needs {required} credits but only {available} are available.")
        self.required = required
        self.available = available

    def extra(self) -> dict[str, Any]:
        return {"required": self.required, "available": self.available}


class WalletInShortfall(LedgerError):
    """A refund or dispute took back credits the wallet no longer had; staff must settle it first."""

    error_code = "BILLING_WALLET_IN_SHORTFALL"

    def __init__(self, *, shortfall: int):
        super().__init__(
            f"This account owes {shortfall} credits from a refunded or disputed purchase; "
            "charges are paused until support settles it."
        )
        self.shortfall = shortfall

    def extra(self) -> dict[str, Any]:
        return {"shortfall": self.shortfall}


class InvalidLedgerRequest(LedgerError):
    error_code = "INVALID_REQUEST"


class InvalidAmount(InvalidLedgerRequest):
    error_code = "INVALID_AMOUNT"


class IdempotencyConflict(LedgerError):
    error_code = "IDEMPOTENCY_KEY_REUSED"


class HoldNotPending(LedgerError):
    error_code = "HOLD_NOT_PENDING"


class HoldExpired(HoldNotPending):
    error_code = "HOLD_EXPIRED"


class LedgerBusy(LedgerError):
    error_code = "LEDGER_BUSY"


class LedgerInconsistent(LedgerError):
    """The wallet's lots do not back what its balance says: nothing was written. Never expected;
    `reconcile_ledger` names the drift."""

    error_code = "LEDGER_INCONSISTENT"


class SpendCapReached(LedgerError):
    """The debit would pass the wallet's daily or monthly spend cap."""

    error_code = "BILLING_SPEND_CAP_REACHED"

    def __init__(self, *, period: str, cap: int, spent: int, resets_at: datetime):
        super().__init__(
            f"This would pass the {period} spend cap of {cap} credits ({spent} spent so far); "
            f"it resets at {resets_at.isoformat()}."
        )
        self.period, self.cap, self.spent, self.resets_at = period, cap, spent, resets_at

    def extra(self) -> dict[str, Any]:
        return {"period": self.period, "cap": self.cap, "spent": self.spent, "resets_at": self.resets_at.isoformat()}


class SpendLimitAboveCeiling(InvalidLedgerRequest):
    """A user's own spend limit above the ceiling Finance set."""

    def __init__(self, *, field: str, ceiling: int):
        super().__init__(f"The limit Finance set is {ceiling} credits; it cannot be raised.")
        self.field, self.ceiling = field, ceiling
