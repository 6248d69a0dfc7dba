"""Stateful property test: the ledger verbs, in any order, agree with a trivial in-memory model."""

import pytest
from django.db.models import Sum
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, invariant, rule, run_state_machine_as_test

from billing import ledger
from billing.models import CreditHold, CreditTransaction, HoldStatus, Wallet
from tests.factories import UserFactory

STEPS = {"runs": 0, "steps": 0, "violations": 0}


class LedgerMachine(RuleBasedStateMachine):
    holds = Bundle("holds")

    def __init__(self):
        super().__init__()
        STEPS["runs"] += 1
        self.users = [UserFactory().id for _ in range(2)]
        self.balance = dict.fromkeys(self.users, 0)
        self.held = dict.fromkeys(self.users, 0)
        self.keys: dict[str, tuple] = {}

    def available(self, user_id: int) -> int:
        return self.balance[user_id] - self.held[user_id]

    @rule(who=st.integers(0, 1), amount=st.integers(1, 400), key=st.sampled_from([None, "k1", "k2", "k3"]))
    def grant(self, who, amount, key):
        user_id = self.users[who]
        previous = self.keys.get(f"{user_id}:{key}") if key else None
        if previous and previous != ("grant", amount):
            with pytest.raises(ledger.IdempotencyConflict):
                ledger.grant(user_id=user_id, amount=amount, reason="p", idempotency_key=key)
            return
        result = ledger.grant(user_id=user_id, amount=amount, reason="p", idempotency_key=key)
        assert result.replayed == bool(previous)
        if not previous:
            self.balance[user_id] += amount
            if key:
                self.keys[f"{user_id}:{key}"] = ("grant", amount)

    @rule(who=st.integers(0, 1), amount=st.integers(1, 300), key=st.sampled_from([None, "c1", "c2"]))
    def charge(self, who, amount, key):
        user_id = self.users[who]
        previous = self.keys.get(f"{user_id}:{key}") if key else None
        if previous and previous != ("charge", amount):
            with pytest.raises(ledger.IdempotencyConflict):
                ledger.charge(user_id=user_id, amount=amount, agent_id="a", idempotency_key=key)
            return
        if not previous and amount > self.available(user_id):
            with pytest.raises(ledger.InsufficientCredits):
                ledger.charge(user_id=user_id, amount=amount, agent_id="a", idempotency_key=key)
            return
        result = ledger.charge(user_id=user_id, amount=amount, agent_id="a", idempotency_key=key)
        assert result.replayed == bool(previous)
        if not previous:
            self.balance[user_id] -= amount
            if key:
                self.keys[f"{user_id}:{key}"] = ("charge", amount)

    @rule(who=st.integers(0, 1), amount=st.integers(-300, 300).filter(bool))
    def adjust(self, who, amount):
        user_id = self.users[who]
        if amount < 0 and -amount > self.available(user_id):
            with pytest.raises(ledger.InsufficientCredits):
                ledger.adjust(user_id=user_id, amount=amount, reason="p")
            return
        ledger.adjust(user_id=user_id, amount=amount, reason="p")
        self.balance[user_id] += amount

    @rule(target=holds, who=st.integers(0, 1), amount=st.integers(1, 300))
    def hold(self, who, amount):
        user_id = self.users[who]
        if amount > self.available(user_id):
            with pytest.raises(ledger.InsufficientCredits):
                ledger.hold(user_id=user_id, amount=amount, agent_id="a")
            return None
        held = ledger.hold(user_id=user_id, amount=amount, agent_id="a").hold
        self.held[user_id] += amount
        return (held.id, user_id, amount)

    @rule(entry=consumes(holds), partial=st.booleans())
    def capture(self, entry, partial):
        if entry is None:
            return
        hold_id, user_id, amount = entry
        taken = max(amount // 2, 1) if partial else amount
        result = ledger.capture(hold_id=hold_id, amount=taken if partial else None)
        assert result.transaction.amount == -taken
        self.held[user_id] -= amount
        self.balance[user_id] -= taken
        with pytest.raises(ledger.HoldNotPending):
            ledger.capture(hold_id=hold_id)

    @rule(entry=consumes(holds))
    def release(self, entry):
        if entry is None:
            return
        hold_id, user_id, amount = entry
        ledger.release(hold_id=hold_id)
        self.held[user_id] -= amount
        with pytest.raises(ledger.HoldNotPending):
            ledger.release(hold_id=hold_id)

    @invariant()
    def ledger_agrees_with_the_model(self):
        STEPS["steps"] += 1
        for user_id in self.users:
            wallet = Wallet.objects.filter(user_id=user_id).first()
            if wallet is None:
                ok = self.balance[user_id] == 0 and self.held[user_id] == 0
            else:
                rows = CreditTransaction.objects.filter(wallet=wallet).order_by("id")
                running, chained = 0, True
                for amount, balance_after in rows.values_list("amount", "balance_after"):
                    running += amount
                    chained &= balance_after == running
                pending = CreditHold.objects.filter(wallet=wallet, status=HoldStatus.PENDING).aggregate(s=Sum("amount"))
                ok = (
                    chained
                    and (wallet.balance_credits, wallet.held_credits) == (self.balance[user_id], self.held[user_id])
                    and wallet.balance_credits == running
                    and wallet.held_credits == (pending["s"] or 0)
                    and wallet.held_credits <= wallet.balance_credits
                )
            if not ok:
                STEPS["violations"] += 1
            assert ok, f"ledger and model disagree for user {user_id}"


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
