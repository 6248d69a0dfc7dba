"""Stateful property test: the ledger verbs, in any order, agree with a small in-memory model.

The model keeps its own lots and applies the burn order itself (priority, soonest expiry with
never-expiring last, promotional before paid, oldest), so every draw, pin, expiry and claw-back
the database makes is checked against an independent implementation after every step, with
the lot invariants: balance == Σ remaining and held == Σ held per wallet, remaining ==
original − Σ draws and held == Σ pins of pending holds per lot.
"""

import itertools
from dataclasses import dataclass
from datetime import datetime, timedelta

import pytest
from django.db.models import Sum
from django.utils import timezone
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, invariant, rule, run_state_machine_as_test

from billing import ledger
from billing.models import (
    CreditDraw,
    CreditHold,
    CreditHoldLot,
    CreditLot,
    CreditTransaction,
    HoldStatus,
    Purchase,
    PurchaseStatus,
    Wallet,
)
from tests.factories import StaffFactory, UserFactory

STEPS = {"runs": 0, "steps": 0, "violations": 0}
NEVER = datetime.max.replace(tzinfo=timezone.get_current_timezone())
_sessions = itertools.count()


@dataclass
class Lot:
    id: int
    user_id: int
    category: str
    priority: int
    expires_at: datetime | None
    remaining: int
    held: int = 0
    purchase_id: int | None = None

    def burn_key(self):
        return (self.priority, self.expires_at is None, self.expires_at or NEVER, self.category == "paid", self.id)

    @property
    def free(self) -> int:
        return self.remaining - self.held


def take(lots: list[Lot], amount: int, free) -> dict[int, int]:
    """The model's burn order: {lot id: credits} taking `amount` of `free(lot)`."""
    taken = {}
    for lot in sorted(lots, key=Lot.burn_key):
        part = min(free(lot), amount - sum(taken.values()))
        if part > 0:
            taken[lot.id] = part
    assert sum(taken.values()) == amount
    return taken


class LedgerMachine(RuleBasedStateMachine):
    holds = Bundle("holds")

    def __init__(self):
        super().__init__()
        STEPS["runs"] += 1
        self.users = [UserFactory().id for _ in range(2)]
        self.staff_id = StaffFactory().id
        self.lots: dict[int, Lot] = {}
        self.pins: dict[int, dict[int, int]] = {}  # pending hold → {lot: credits}
        self.shortfall = dict.fromkeys(self.users, 0)
        self.purchases: list[tuple[int, int]] = []  # (purchase id, user id)
        self.keys: dict[str, tuple] = {}
        self.now = timezone.now().replace(microsecond=0)

    # --- the model ------------------------------------------------------------------------

    def user_lots(self, user_id: int) -> list[Lot]:
        return [lot for lot in self.lots.values() if lot.user_id == user_id]

    def balance(self, user_id: int) -> int:
        return sum(lot.remaining for lot in self.user_lots(user_id))

    def available(self, user_id: int) -> int:
        return sum(lot.free for lot in self.user_lots(user_id))

    def debit(self, user_id: int, amount: int, lots: list[Lot] | None = None) -> None:
        for lot_id, part in take(lots or self.user_lots(user_id), amount, lambda lot: lot.free).items():
            self.lots[lot_id].remaining -= part

    def new_lot(self, row: CreditTransaction, **terms) -> None:
        lot = row.lot
        self.lots[lot.id] = Lot(lot.id, lot.wallet.user_id, remaining=row.amount, **terms)

    def replayed_or_conflict(self, user_id: int, key: str | None, request: tuple, call) -> bool:
        """True when the call was a replay (or a refused conflict) the model must not apply."""
        previous = self.keys.get(f"{user_id}:{key}") if key else None
        if previous and previous != request:
            with pytest.raises(ledger.IdempotencyConflict):
                call()
            return True
        if previous:
            assert call().replayed
            return True
        return False

    # --- rules ----------------------------------------------------------------------------

    @rule(
        who=st.integers(0, 1),
        amount=st.integers(1, 400),
        key=st.sampled_from([None, "k1", "k2"]),
        category=st.sampled_from(["promotional", "paid"]),
        days=st.sampled_from([None, 1, 2, 3]),
        priority=st.sampled_from([0, 0, 1, -1]),
    )
    def grant(self, who, amount, key, category, days, priority):
        user_id = self.users[who]
        expires_at = self.now + timedelta(days=days) if days else None
        request = ("grant", amount, category, days, priority)

        def call():
            return ledger.grant(
                user_id=user_id,
                amount=amount,
                reason="p",
                idempotency_key=key,
                category=category,
                expires_at=expires_at,
                priority=priority,
            )

        if key and self.replayed_or_conflict(user_id, key, request, call):
            return
        result = call()
        assert not result.replayed
        self.new_lot(result.transaction, category=category, priority=priority, expires_at=expires_at)
        if key:
            self.keys[f"{user_id}:{key}"] = request

    @rule(who=st.integers(0, 1), amount=st.integers(1, 400), days=st.sampled_from([None, 2]))
    def purchase(self, who, amount, days):
        user_id = self.users[who]
        session = f"cs_machine_{next(_sessions)}"
        bought = Purchase.objects.create(
            user_id=user_id,
            package_id="p",
            credits=amount,
            amount_cents=amount * 3,
            currency="usd",
            status=PurchaseStatus.PAID,
            stripe_checkout_session_id=session,
        )
        expires_at = self.now + timedelta(days=days) if days else None
        result = ledger.purchase(
            user_id=user_id,
            amount=amount,
            checkout_session_id=session,
            payment_intent_id=None,
            stripe_event_id="evt",
            package_id="p",
            purchase_id=bought.id,
            amount_cents=amount * 3,
            currency="usd",
            expires_at=expires_at,
        )
        assert result.transaction.lot.cost_basis_cents == amount * 3
        self.new_lot(result.transaction, category="paid", priority=0, expires_at=expires_at, purchase_id=bought.id)
        self.purchases.append((bought.id, user_id))

    @rule(who=st.integers(0, 1), amount=st.integers(1, 300), key=st.sampled_from([None, "c1", "c2"]))
    def charge(self, who, amount, key):
        user_id = self.users[who]

        def call():
            return ledger.charge(user_id=user_id, amount=amount, agent_id="a", idempotency_key=key)

        if key and self.replayed_or_conflict(user_id, key, ("charge", amount), call):
            return
        if self.shortfall[user_id]:
            with pytest.raises(ledger.WalletInShortfall):
                call()
            return
        if amount > self.available(user_id):
            with pytest.raises(ledger.InsufficientCredits):
                call()
            return
        assert not call().replayed
        self.debit(user_id, amount)
        if key:
            self.keys[f"{user_id}:{key}"] = ("charge", amount)

    @rule(who=st.integers(0, 1), amount=st.integers(-300, 300).filter(bool))
    def adjust(self, who, amount):
        user_id = self.users[who]
        if amount < 0 and -amount > self.available(user_id):
            with pytest.raises(ledger.InsufficientCredits):
                ledger.adjust(user_id=user_id, amount=amount, reason="p")
            return
        result = ledger.adjust(user_id=user_id, amount=amount, reason="p")
        if amount > 0:
            self.new_lot(result.transaction, category="promotional", priority=0, expires_at=None)
        else:
            self.debit(user_id, -amount)

    @rule(target=holds, who=st.integers(0, 1), amount=st.integers(1, 300))
    def hold(self, who, amount):
        user_id = self.users[who]
        if self.shortfall[user_id]:
            with pytest.raises(ledger.WalletInShortfall):
                ledger.hold(user_id=user_id, amount=amount, agent_id="a")
            return None
        if amount > self.available(user_id):
            with pytest.raises(ledger.InsufficientCredits):
                ledger.hold(user_id=user_id, amount=amount, agent_id="a")
            return None
        held = ledger.hold(user_id=user_id, amount=amount, agent_id="a").hold
        pins = take(self.user_lots(user_id), amount, lambda lot: lot.free)
        for lot_id, part in pins.items():
            self.lots[lot_id].held += part
        self.pins[held.id] = pins
        return (held.id, user_id, amount)

    @rule(entry=consumes(holds), partial=st.booleans())
    def capture(self, entry, partial):
        if entry is None:
            return
        hold_id, _, amount = entry
        taken = max(amount // 2, 1) if partial else amount
        result = ledger.capture(hold_id=hold_id, amount=taken if partial else None)
        assert result.transaction.amount == -taken
        pins = self.pins.pop(hold_id)
        pinned = [self.lots[lot_id] for lot_id in pins]
        drawn = take(pinned, taken, lambda lot: pins[lot.id])
        for lot_id, part in pins.items():
            self.lots[lot_id].held -= part
            self.lots[lot_id].remaining -= drawn.get(lot_id, 0)
        assert dict(result.transaction.draws.values_list("lot_id", "credits")) == drawn
        with pytest.raises(ledger.HoldNotPending):
            ledger.capture(hold_id=hold_id)

    @rule(entry=consumes(holds))
    def release(self, entry):
        if entry is None:
            return
        hold_id, _, _ = entry
        ledger.release(hold_id=hold_id)
        for lot_id, part in self.pins.pop(hold_id).items():
            self.lots[lot_id].held -= part
        with pytest.raises(ledger.HoldNotPending):
            ledger.release(hold_id=hold_id)

    @rule(pick=st.integers(0, 50), twice=st.booleans())
    def expire(self, pick, twice):
        """A lot's expiry passes (its date moved to the past) and the sweep runs."""
        if not self.lots:
            return
        lot = self.lots[sorted(self.lots)[pick % len(self.lots)]]
        lot.expires_at = timezone.now().replace(microsecond=0) - timedelta(minutes=1)
        CreditLot.objects.filter(pk=lot.id).update(expires_at=lot.expires_at)
        result = ledger.expire_lot(lot_id=lot.id)
        assert (result is None) == (lot.free == 0)
        if result is not None:
            assert result.transaction.amount == -lot.free
            lot.remaining = lot.held
        if twice:
            assert ledger.expire_lot(lot_id=lot.id) is None

    @rule(pick=st.integers(0, 50), amount=st.integers(1, 400))
    def refund(self, pick, amount):
        """A refund claws back from the purchase's own lots; what they lack is a shortfall."""
        if not self.purchases:
            return
        purchase_id, user_id = self.purchases[pick % len(self.purchases)]
        own = [lot for lot in self.user_lots(user_id) if lot.purchase_id == purchase_id]
        taken = min(amount, sum(lot.free for lot in own))
        result = ledger.clawback(
            user_id=user_id,
            amount=amount,
            reason="refund",
            idempotency_key=f"refund:{next(_sessions)}",
            purchase_id=purchase_id,
        )
        assert (result.clawed_back, result.shortfall) == (taken, amount - taken)
        if taken:
            self.debit(user_id, taken, own)
        self.shortfall[user_id] += amount - taken

    @rule(who=st.integers(0, 1))
    def settle(self, who):
        user_id = self.users[who]
        owed = self.shortfall[user_id]
        collect = min(owed, self.available(user_id))
        result = ledger.settle_shortfall(user_id=user_id, actor_id=self.staff_id, reason="settled")
        assert result.clawed_back == collect
        if collect:
            self.debit(user_id, collect)
        self.shortfall[user_id] = min(owed - collect, sum(lot.held for lot in self.user_lots(user_id)))

    # --- invariants -----------------------------------------------------------------------

    @invariant()
    def ledger_agrees_with_the_model(self):
        STEPS["steps"] += 1
        problems = []
        for user_id in self.users:
            wallet = Wallet.objects.filter(user_id=user_id).first()
            if wallet is None:
                if self.balance(user_id) or self.user_lots(user_id):
                    problems.append(f"user {user_id} has no wallet")
                continue
            running = 0
            for amount, balance_after in (
                CreditTransaction.objects.filter(wallet=wallet).order_by("id").values_list("amount", "balance_after")
            ):
                running += amount
                if balance_after != running:
                    problems.append(f"wallet {wallet.id}: broken balance_after chain")
            pending = CreditHold.objects.filter(wallet=wallet, status=HoldStatus.PENDING).aggregate(s=Sum("amount"))
            expected = (self.balance(user_id), sum(lot.held for lot in self.user_lots(user_id)))
            if (wallet.balance_credits, wallet.held_credits) != expected:
                found = (wallet.balance_credits, wallet.held_credits)
                problems.append(f"wallet {wallet.id}: balance/held {found} ≠ model {expected}")
            if wallet.balance_credits != running or wallet.held_credits != (pending["s"] or 0):
                problems.append(f"wallet {wallet.id}: balance or held disagrees with its rows or holds")
            if wallet.shortfall_credits != self.shortfall[user_id]:
                problems.append(f"wallet {wallet.id}: shortfall {wallet.shortfall_credits} ≠ {self.shortfall[user_id]}")
        stored = {lot.id: lot for lot in CreditLot.objects.filter(wallet__user_id__in=self.users)}
        if stored.keys() != self.lots.keys():
            problems.append(f"lots {sorted(stored)} ≠ model {sorted(self.lots)}")
        draws = dict(
            CreditDraw.objects.filter(lot__in=stored.keys()).values_list("lot_id").annotate(total=Sum("credits"))
        )
        pins = dict(
            CreditHoldLot.objects.filter(lot__in=stored.keys(), hold__status=HoldStatus.PENDING)
            .values_list("lot_id")
            .annotate(total=Sum("credits"))
        )
        for lot_id, lot in stored.items():
            model = self.lots.get(lot_id)
            if model is None or (lot.remaining_credits, lot.held_credits) != (model.remaining, model.held):
                problems.append(f"lot {lot_id}: {lot.remaining_credits}/{lot.held_credits} ≠ model {model}")
            if lot.remaining_credits != lot.original_credits - draws.get(lot_id, 0):
                problems.append(f"lot {lot_id}: remaining ≠ original − Σ draws")
            if lot.held_credits != pins.get(lot_id, 0) or not 0 <= lot.held_credits <= lot.remaining_credits:
                problems.append(f"lot {lot_id}: held ≠ Σ pins of pending holds, or out of range")
        if problems:
            STEPS["violations"] += 1
        assert not problems, problems


@pytest.mark.django_db
def test_ledger_state_machine(figures):
    run_state_machine_as_test(
        LedgerMachine,
        settings=settings(
            max_examples=40,
            stateful_step_count=30,
            deadline=None,
            suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
        ),
    )
    figures(
        f"ledger state machine: {STEPS['runs']} runs, {STEPS['steps']} checked steps, "
        f"invariant violations {STEPS['violations']}"
    )
