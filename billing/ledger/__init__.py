"""The only code that changes wallet balances.

Every verb here:
- runs in one database transaction and locks the wallet row before it reads or changes the
  balance — charge, hold, capture and release by a conditional UPDATE inside their one plan
  of statements (`billing.ledger.sql`: one round trip on MariaDB), the rarer verbs by
  `SELECT … FOR UPDATE` — so concurrent calls on one wallet serialise and no update is lost;
- writes exactly one immutable `CreditTransaction` carrying `balance_after` for every
  change of the balance (holds move `held_credits` only and write a `CreditHold`);
- is idempotent on its `idempotency_key`: the same key replays the first result, the
  same key with different parameters raises `IdempotencyConflict`;
- retries lock-wait timeouts and deadlocks itself when it owns the transaction, and
  raises `LedgerBusy` (retryable, never a 500) if they persist or the connection is lost —
  except charge and hold, which always write under a key (`call:<time><random>` when the caller gave
  none) and so are run again after a lost answer, replaying the first run if it committed.

One lock order everywhere: wallet → hold → lots → agent run (→ shortfalls for claw-backs); code
outside the ledger that writes what a debit reads under the wallet lock (auto-recharge attempts
and settings) takes the wallet first (`lock_wallet`). Holds
are settled by `capture`/`release`/`expire_hold`, which lock the wallet first, then the
hold; an agent run's row is written by statements (`then=`) committed in the same plan,
after both, and `expire_holds` ends a run through the `hold_expired` signal inside the
release's transaction. A running job's lease (`extend_hold`) locks its hold alone. No verb
locks two wallets.

The modules:
- `crediting` — credits coming in: `grant`, `adjust`, `purchase`;
- `spending` — credits going out for work: `charge`, `hold`, `capture`, `release`,
  `expire_hold`, `extend_hold` (the agent-run path, one plan each);
- `refunds` — `clawback`, `restore_clawback`, `settle_shortfall`;
- `expiry` — `expire_lot`: a lot's unheld remainder past its expiry leaves the balance;
- `lots` — lots and the burn order: which credits a debit or a hold takes (SQL, written once);
- `caps` — spend caps per UTC day and month, checked inside the debit's own wallet UPDATE;
  `limits` — `set_limits`, the user's caps and Finance's ceilings, and `set_thresholds`;
- `thresholds` — balance alerts and auto-recharge crossings, decided under the wallet's lock by
  the change itself (a plan's follow-up, sent only when something was crossed);
- `outbox` — events as statements of a plan, committed with the change that causes them;
- `posting` — what they share: checks, the wallet lock, idempotency replays, posting a row;
- `retry` — the transaction retried after deadlocks and lock waits (`run_with_retries`), and
  after a lost answer when it can tell its own first run (`run_replayable`);
- `sql` — plans: a verb as a list of statements run in one transaction;
- `errors`, `results` — what a verb raises and returns (no HTTP in either).
"""

from billing.ledger.crediting import adjust, grant, purchase
from billing.ledger.errors import (
    HoldExpired,
    HoldNotPending,
    IdempotencyConflict,
    InsufficientCredits,
    InvalidAmount,
    InvalidLedgerRequest,
    LedgerBusy,
    LedgerError,
    LedgerInconsistent,
    SpendCapReached,
    SpendLimitAboveCeiling,
    WalletInShortfall,
)
from billing.ledger.expiry import expire_lot
from billing.ledger.limits import set_limits, set_thresholds
from billing.ledger.posting import check_staff_amount, lock_wallet
from billing.ledger.refunds import clawback, restore_clawback, settle_shortfall
from billing.ledger.results import ClawbackResult, HoldResult, LedgerResult, RestoreResult
from billing.ledger.retry import is_retryable_error, run_replayable, run_with_retries
from billing.ledger.spending import capture, charge, expire_hold, extend_hold, hold, release

__all__ = [
    "ClawbackResult",
    "HoldExpired",
    "HoldNotPending",
    "HoldResult",
    "IdempotencyConflict",
    "InsufficientCredits",
    "InvalidAmount",
    "InvalidLedgerRequest",
    "LedgerBusy",
    "LedgerError",
    "LedgerInconsistent",
    "LedgerResult",
    "RestoreResult",
    "SpendCapReached",
    "SpendLimitAboveCeiling",
    "WalletInShortfall",
    "adjust",
    "capture",
    "charge",
    "check_staff_amount",
    "clawback",
    "expire_hold",
    "expire_lot",
    "extend_hold",
    "grant",
    "hold",
    "is_retryable_error",
    "lock_wallet",
    "purchase",
    "release",
    "restore_clawback",
    "run_replayable",
    "run_with_retries",
    "set_limits",
    "set_thresholds",
    "settle_shortfall",
]
