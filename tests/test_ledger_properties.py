"""Property: whatever sequence of verbs runs, the ledger agrees with a trivial model."""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from billing import ledger
from billing.models import CreditHold, HoldStatus, Wallet
from tests.factories import UserFactory
from tests.test_ledger import assert_consistent

operations = st.lists(
    st.one_of(
        st.tuples(st.just("grant"), st.integers(1, 500)),
        st.tuples(st.just("adjust"), st.integers(-500, 500).filter(bool)),
        st.tuples(st.just("charge"), st.integers(1, 300)),
        st.tuples(st.just("hold"), st.integers(1, 300)),
        st.tuples(st.just("capture"), st.integers(0, 5)),
        st.tuples(st.just("release"), st.integers(0, 5)),
    ),
    max_size=25,
)


@pytest.mark.django_db
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=operations)
def test_ledger_matches_a_simple_model(ops):
    user = UserFactory()
    balance = held = 0
    pending: list[tuple[int, int]] = []  # (hold id, amount)
    for verb, value in ops:
        if verb in ("grant", "adjust"):
            if verb == "adjust" and value < 0 and -value > balance - held:
                with pytest.raises(ledger.InsufficientCredits):
                    ledger.adjust(user_id=user.id, amount=value, reason="p")
                continue
            getattr(ledger, verb)(user_id=user.id, amount=value, reason="p")
            balance += value
        elif verb in ("charge", "hold"):
            if value > balance - held:
                with pytest.raises(ledger.InsufficientCredits):
                    getattr(ledger, verb)(user_id=user.id, amount=value, agent_id="a")
                continue
            result = getattr(ledger, verb)(user_id=user.id, amount=value, agent_id="a")
            if verb == "charge":
                balance -= value
            else:
                pending.append((result.hold.id, value))
                held += value
        elif pending:
            hold_id, amount = pending.pop(value % len(pending))
            if verb == "capture":
                ledger.capture(hold_id=hold_id)
                balance -= amount
            else:
                ledger.release(hold_id=hold_id)
            held -= amount
        wallet = Wallet.objects.get(user=user) if Wallet.objects.filter(user=user).exists() else None
        if wallet is not None:
            assert (wallet.balance_credits, wallet.held_credits) == (balance, held)
    if Wallet.objects.filter(user=user).exists():
        assert_consistent(user)
        assert CreditHold.objects.filter(wallet__user=user, status=HoldStatus.PENDING).count() == len(pending)
