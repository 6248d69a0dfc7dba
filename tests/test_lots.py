"""Credit lots: the burn order in every tie case, holds pinning lots, expiry, refunds that
follow their purchase, and `reconcile_ledger` catching a corrupted lot or draw."""

import dataclasses
from datetime import timedelta

import pytest
from django.conf import settings
from django.core.management import call_command
from django.db import connection, transaction
from django.urls import reverse
from django.utils import timezone

from billing import ledger
from billing.expiry import expire_due_credits
from billing.ledger import spending
from billing.ledger import sql as billing_sql
from billing.ledger.errors import LedgerInconsistent
from billing.models import (
    CreditDraw,
    CreditHold,
    CreditHoldLot,
    CreditLot,
    CreditTransaction,
    Purchase,
    PurchaseStatus,
    TransactionKind,
    Wallet,
)
from billing.reconcile import reconcile
from tests.concurrency import in_threads
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db
DAY = timedelta(days=1)


@pytest.fixture
def user():
    return UserFactory()


def lot_of(result) -> CreditLot:
    return CreditLot.objects.get(transaction_id=result.transaction.id)


def grant(user, amount, **terms) -> CreditLot:
    return lot_of(ledger.grant(user_id=user.id, amount=amount, reason="test", **terms))


def bought(user, credits, *, cents=None, expires_at=None, session=None) -> tuple[Purchase, CreditLot]:
    session = session or f"cs_{user.id}_{Purchase.objects.count()}"
    purchase = Purchase.objects.create(
        user=user,
        package_id="pack",
        credits=credits,
        amount_cents=cents or credits,
        currency="usd",
        status=PurchaseStatus.PAID,
        stripe_checkout_session_id=session,
    )
    result = ledger.purchase(
        user_id=user.id,
        amount=credits,
        checkout_session_id=session,
        payment_intent_id=f"pi_{session}",
        stripe_event_id=f"evt_{session}",
        package_id="pack",
        purchase_id=purchase.id,
        amount_cents=cents or credits,
        currency="usd",
        expires_at=expires_at,
    )
    purchase.transaction = result.transaction
    purchase.save(update_fields=["transaction"])
    return purchase, lot_of(result)


def draws(result) -> list[tuple[int, int]]:
    return list(
        CreditDraw.objects.filter(transaction_id=result.transaction.id).order_by("id").values_list("lot_id", "credits")
    )


def remaining(*lots: CreditLot) -> list[int]:
    return [CreditLot.objects.get(pk=lot.pk).remaining_credits for lot in lots]


# --- burn order -------------------------------------------------------------------------------


def test_lower_priority_is_spent_first_whatever_its_expiry_or_category(user):
    soon_promo = grant(user, 10, expires_at=timezone.now() + DAY)
    preferred = grant(user, 10, category="paid", priority=-1)
    result = ledger.charge(user_id=user.id, amount=15, agent_id="a")
    assert draws(result) == [(preferred.id, 10), (soon_promo.id, 5)]


def test_the_soonest_expiry_is_spent_first_and_never_expiring_credits_last(user):
    never = grant(user, 10)
    later = grant(user, 10, expires_at=timezone.now() + 3 * DAY)
    sooner = grant(user, 10, expires_at=timezone.now() + DAY)
    result = ledger.charge(user_id=user.id, amount=25, agent_id="a")
    assert draws(result) == [(sooner.id, 10), (later.id, 10), (never.id, 5)]


def test_with_the_same_priority_and_expiry_promotional_credits_go_before_paid(user):
    at = timezone.now() + DAY
    _, paid = bought(user, 10, expires_at=at)
    promo = grant(user, 10, expires_at=at)
    result = ledger.charge(user_id=user.id, amount=12, agent_id="a")
    assert draws(result) == [(promo.id, 10), (paid.id, 2)]


def test_with_everything_else_equal_the_oldest_lot_goes_first(user):
    first, second = grant(user, 10), grant(user, 10)
    result = ledger.charge(user_id=user.id, amount=14, agent_id="a")
    assert draws(result) == [(first.id, 10), (second.id, 4)]


def test_a_debit_adjustment_and_a_charge_draw_in_the_same_order(user):
    first, second = grant(user, 5), grant(user, 5)
    adjusted = ledger.adjust(user_id=user.id, amount=-7, reason="correction")
    assert draws(adjusted) == [(first.id, 5), (second.id, 2)]
    assert remaining(first, second) == [0, 3]


def test_a_grant_takes_its_category_expiry_and_priority_and_refuses_bad_ones(user):
    at = timezone.now() + DAY
    lot = grant(user, 10, category="paid", expires_at=at, priority=3)
    assert (lot.category, lot.expires_at, lot.priority, lot.cost_basis_cents) == ("paid", at, 3, 0)
    with pytest.raises(ledger.InvalidLedgerRequest):
        ledger.grant(user_id=user.id, amount=1, reason="x", category="gold")
    with pytest.raises(ledger.InvalidLedgerRequest):
        ledger.grant(user_id=user.id, amount=1, reason="x", expires_at=timezone.now() - DAY)
    assert CreditLot.objects.filter(wallet__user=user).count() == 1


def test_a_replay_with_other_lot_terms_is_a_conflict(user):
    ledger.grant(user_id=user.id, amount=10, reason="x", idempotency_key="g1")
    with pytest.raises(ledger.IdempotencyConflict):
        ledger.grant(user_id=user.id, amount=10, reason="x", idempotency_key="g1", category="paid")
    assert ledger.grant(user_id=user.id, amount=10, reason="x", idempotency_key="g1").replayed


# --- holds pin lots ------------------------------------------------------------------------------


# --- the short way: the first lot in burn order has the whole amount ------------------------------
# On MariaDB a take that the first lot in burn order covers is one draw (or pin) written by a short
# way (`lots._take_steps`); it must pick the same lot as the burn over all lots would. In each case
# the lot the burn order takes first is not the oldest, so an order by id alone would be caught.


def _priority_first(user):
    other = grant(user, 10, expires_at=timezone.now() + DAY)
    return grant(user, 10, category="paid", priority=-1), other


def _soonest_expiry_first(user):
    never, later = grant(user, 10), grant(user, 10, expires_at=timezone.now() + 3 * DAY)
    return grant(user, 10, expires_at=timezone.now() + DAY), never, later


def _promotional_first(user):
    at = timezone.now() + DAY
    _, paid = bought(user, 10, expires_at=at)
    return grant(user, 10, expires_at=at), paid


def _oldest_first(user):
    first = grant(user, 10)
    return first, grant(user, 10)


def _exhausted_and_pinned_lots_skipped(user):
    spent, pinned = grant(user, 10, priority=-2), grant(user, 10, priority=-1)
    ledger.charge(user_id=user.id, amount=10, agent_id="a")  # `spent` drawn to nothing: closed
    ledger.hold(user_id=user.id, amount=10, agent_id="a")  # all of `pinned` is held
    return grant(user, 10), spent, pinned


SHORT_WAY_CASES = {
    "priority": _priority_first,
    "soonest expiry": _soonest_expiry_first,
    "promotional before paid": _promotional_first,
    "oldest": _oldest_first,
    "exhausted and pinned lots skipped": _exhausted_and_pinned_lots_skipped,
}


def pins(hold) -> list[tuple[int, int]]:
    return list(CreditHoldLot.objects.filter(hold=hold).order_by("id").values_list("lot_id", "credits"))


@pytest.mark.parametrize("ways", ["compound statement", "statement by statement"])
@pytest.mark.parametrize("case", SHORT_WAY_CASES)
def test_an_amount_the_first_lot_covers_is_taken_from_it_in_every_tie_case(user, case, ways, monkeypatch):
    if ways == "statement by statement":
        monkeypatch.setattr(billing_sql, "compound_supported", lambda: False)
    first, *others = SHORT_WAY_CASES[case](user)
    before = remaining(*others)
    result = ledger.charge(user_id=user.id, amount=4, agent_id="a")
    assert draws(result) == [(first.id, 4)]
    held = ledger.hold(user_id=user.id, amount=6, agent_id="a").hold
    assert pins(held) == [(first.id, 6)]  # exactly what is left free of it
    first.refresh_from_db()
    assert (first.remaining_credits, first.held_credits, first.is_open) == (6, 6, True)
    assert remaining(*others) == before
    # Nothing free is left in it: the next take skips it, by the burn over every lot.
    grant(user, 5)
    again = ledger.charge(user_id=user.id, amount=1, agent_id="a")
    assert first.id not in [lot for lot, _ in draws(again)]
    assert reconcile() == []


def test_a_take_the_first_lot_only_partly_covers_burns_on_and_a_drawn_out_lot_closes(user):
    first, second = grant(user, 10), grant(user, 10)
    ledger.hold(user_id=user.id, amount=8, agent_id="a")  # 2 of `first` free
    result = ledger.charge(user_id=user.id, amount=4, agent_id="a")
    assert draws(result) == [(first.id, 2), (second.id, 2)]
    drawn_out = ledger.charge(user_id=user.id, amount=8, agent_id="a")
    assert draws(drawn_out) == [(second.id, 8)]
    second.refresh_from_db()
    assert (second.remaining_credits, second.is_open) == (0, False)
    assert CreditLot.objects.filter(wallet=second.wallet, is_open=True).get() == first
    assert reconcile() == []


@pytest.mark.django_db(transaction=True)
def test_the_short_way_reads_the_lots_as_they_are_not_an_older_snapshot(user):
    """In a caller's transaction whose snapshot predates a lot the burn order now takes first
    (REPEATABLE READ here; the service runs READ COMMITTED), a debit still takes that lot: the
    short way reads the first lot with a locking read, as the general burn does."""
    grant(user, 10)
    with connection.cursor() as cursor:
        cursor.execute("SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ")
    try:
        with transaction.atomic():
            assert CreditLot.objects.filter(wallet__user=user).count() == 1  # the snapshot is taken
            (preferred,) = in_threads([None], lambda _: grant(user, 10, priority=-1), threads=1)
            result = ledger.adjust(user_id=user.id, amount=-3, reason="correction")
        assert draws(result) == [(preferred.id, 3)]
    finally:
        with connection.cursor() as cursor:
            cursor.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")


def test_a_charge_whose_debit_kept_no_wallet_writes_nothing_to_the_last_one(user, monkeypatch):
    """The charge's row takes its wallet and balance from variables its debit sets: they are
    cleared first, so a debit that did not set them (its WHERE changed so that the assignment is
    skipped) fails the plan instead of writing into the wallet of the connection's last charge."""
    other = UserFactory()
    ledger.grant(user_id=other.id, amount=50, reason="seed")
    ledger.grant(user_id=user.id, amount=50, reason="seed")
    ledger.charge(user_id=other.id, amount=5, agent_id="a")  # the connection's variables: other's
    real = spending._charge_sql.__wrapped__
    monkeypatch.setattr(
        spending,
        "_charge_sql",
        lambda mariadb, low_balance_default: tuple(
            None if text is None else text.replace(" AND (@ledger_wallet := id) IS NOT NULL", "")
            for text in real(mariadb, low_balance_default)
        ),
    )
    with pytest.raises(Exception):  # noqa: B017 — which error matters less than what was written
        ledger.charge(user_id=user.id, amount=7, agent_id="a")
    assert CreditTransaction.objects.filter(wallet__user=other, kind="charge").count() == 1
    assert CreditTransaction.objects.filter(wallet__user=user, kind="charge").count() == 0
    assert reconcile() == []


def test_a_hold_whose_update_kept_no_wallet_pins_nothing_for_the_last_one(user, monkeypatch):
    """A hold's row and pins take its wallet from the variable its UPDATE of the wallet sets
    (`spending._taking_sql`): cleared first, so an UPDATE that did not set it fails the plan
    instead of writing the hold into the wallet of the connection's last hold."""
    other = UserFactory()
    ledger.grant(user_id=other.id, amount=50, reason="seed")
    ledger.grant(user_id=user.id, amount=50, reason="seed")
    ledger.hold(user_id=other.id, amount=5, agent_id="a")  # the connection's variables: other's
    real = spending._taking_sql
    kept = " AND (@ledger_wallet := id) IS NOT NULL"
    assert kept in real(True, settings.BALANCE_LOW_THRESHOLD_CREDITS, held=True)
    monkeypatch.setattr(
        spending, "_taking_sql", lambda mariadb, low, *, held: real(mariadb, low, held=held).replace(kept, "")
    )
    with pytest.raises(Exception):  # noqa: B017 — which error matters less than what was written
        ledger.hold(user_id=user.id, amount=7, agent_id="a")
    assert CreditHold.objects.filter(wallet__user=other).count() == 1
    assert CreditHold.objects.filter(wallet__user=user).count() == 0
    assert CreditLot.objects.get(wallet__user=other).held_credits == 5
    assert reconcile() == []


def test_a_take_its_lots_do_not_cover_stops_with_nothing_kept_not_even_from_the_last_lot(user):
    """The lots disagree with the wallet (here: its one lot drawn out behind the ledger's back): a
    charge or hold stops with LedgerInconsistent and writes nothing — in particular not a draw or
    pin of the lot the connection's previous take went the short way with (its variables are
    cleared first)."""
    other = UserFactory()
    ledger.grant(user_id=other.id, amount=50, reason="seed")
    ledger.grant(user_id=user.id, amount=50, reason="seed")
    other_lot = CreditLot.objects.get(wallet__user=other)
    CreditLot.objects.filter(wallet__user=user).update(remaining_credits=0)
    for take in (
        lambda: ledger.charge(user_id=user.id, amount=10, agent_id="a"),
        lambda: ledger.hold(user_id=user.id, amount=10, agent_id="a"),
    ):
        ledger.charge(user_id=other.id, amount=10, agent_id="a")  # the short way, 10 from other's lot
        with pytest.raises(LedgerInconsistent):
            take()
    wallet = Wallet.objects.get(user=user)
    assert (wallet.balance_credits, wallet.held_credits) == (50, 0)
    assert not CreditTransaction.objects.filter(wallet=wallet, kind="charge").exists()
    assert not CreditHold.objects.filter(wallet=wallet).exists()
    other_lot.refresh_from_db()
    assert (other_lot.remaining_credits, other_lot.held_credits) == (30, 0)
    assert CreditDraw.objects.filter(lot=other_lot).count() == 2
    assert not CreditHoldLot.objects.filter(lot=other_lot).exists()


def test_a_hold_without_an_agent_is_captured(user):
    ledger.grant(user_id=user.id, amount=50, reason="seed")
    held = ledger.hold(user_id=user.id, amount=10, agent_id=None).hold
    captured = ledger.capture(hold_id=held.id, amount=6)
    stored = CreditTransaction.objects.get(pk=captured.transaction.pk)
    assert (stored.amount, stored.agent_id, stored.hold_id, stored.balance_after) == (-6, None, held.id, 44)
    assert (captured.transaction.amount, captured.transaction.agent_id) == (-6, None)
    assert reconcile() == []


def test_a_capture_whose_statements_kept_nothing_charges_nothing_to_the_last_wallet(user, monkeypatch):
    """A capture's later statements take the wallet and the hold's amount from variables its
    first ones set (`spending._capture_steps_kept`): they are cleared first, so statements that
    did not set them stop the plan instead of charging the wallet of the connection's last
    capture."""
    other = UserFactory()
    ledger.grant(user_id=other.id, amount=50, reason="seed")
    ledger.grant(user_id=user.id, amount=50, reason="seed")
    ledger.capture(hold_id=ledger.hold(user_id=other.id, amount=5, agent_id="a").hold.id)  # other's variables
    held = ledger.hold(user_id=user.id, amount=7, agent_id="a").hold
    real = spending._capture_steps_kept

    def keeping_nothing(**kwargs):
        steps, wallet = real(**kwargs)
        forget = [" AND (@ledger_wallet := id) IS NOT NULL", " AND (@hold_amount := amount) IS NOT NULL"]
        for text in forget:
            assert any(text in step.sql for step in steps), text
        return [dataclasses.replace(step, sql=_without(step.sql, forget)) for step in steps], wallet

    monkeypatch.setattr(spending, "_capture_steps_kept", keeping_nothing)
    with pytest.raises(Exception):  # noqa: B017 — which error matters less than what was written
        ledger.capture(hold_id=held.id)
    assert CreditTransaction.objects.filter(wallet__user=other, kind="charge").count() == 1
    assert CreditTransaction.objects.filter(wallet__user=user, kind="charge").count() == 0
    held.refresh_from_db()
    assert held.status == "pending"
    assert reconcile() == []


def _without(sql: str, texts: list[str]) -> str:
    for text in texts:
        sql = sql.replace(text, "")
    return sql


def test_a_capture_draws_exactly_the_lots_its_hold_pinned(user):
    never = grant(user, 30)
    held = ledger.hold(user_id=user.id, amount=20, agent_id="a").hold
    assert CreditLot.objects.get(pk=never.pk).held_credits == 20
    # Credits arriving later that the burn order would prefer do not change what the hold pinned.
    sooner = grant(user, 50, expires_at=timezone.now() + DAY)
    captured = ledger.capture(hold_id=held.id, amount=15)
    assert draws(captured) == [(never.id, 15)]
    assert remaining(never, sooner) == [15, 50]
    assert CreditLot.objects.get(pk=never.pk).held_credits == 0


def test_a_release_frees_the_pinned_credits(user):
    lot = grant(user, 30)
    held = ledger.hold(user_id=user.id, amount=20, agent_id="a").hold
    ledger.release(hold_id=held.id)
    lot.refresh_from_db()
    assert (lot.remaining_credits, lot.held_credits) == (30, 0)


def test_a_debit_never_takes_pinned_credits(user):
    pinned = grant(user, 20, expires_at=timezone.now() + DAY)
    other = grant(user, 20)
    ledger.hold(user_id=user.id, amount=20, agent_id="a")
    result = ledger.charge(user_id=user.id, amount=5, agent_id="a")
    assert draws(result) == [(other.id, 5)]
    assert remaining(pinned) == [20]


# --- expiry ----------------------------------------------------------------------------------------


def expire_now(lot: CreditLot) -> None:
    CreditLot.objects.filter(pk=lot.pk).update(expires_at=timezone.now() - timedelta(seconds=1))


def test_expiry_takes_what_is_left_of_a_lot_once(user):
    lot = grant(user, 40, expires_at=timezone.now() + DAY)
    grant(user, 10)
    ledger.charge(user_id=user.id, amount=15, agent_id="a")
    expire_now(lot)
    assert expire_due_credits() == 1
    assert expire_due_credits() == 0
    rows = CreditTransaction.objects.filter(wallet__user=user, kind=TransactionKind.EXPIRY)
    assert [(r.amount, r.balance_after) for r in rows] == [(-25, 10)]
    assert draws(ledger.LedgerResult(rows[0])) == [(lot.id, 25)]
    assert reconcile() == []


def test_expiry_never_takes_held_credits_and_the_run_pays_with_them(user):
    lot = grant(user, 40, expires_at=timezone.now() + DAY)
    held = ledger.hold(user_id=user.id, amount=30, agent_id="a").hold
    expire_now(lot)
    expire_due_credits()
    lot.refresh_from_db()
    assert (lot.remaining_credits, lot.held_credits) == (30, 30)  # 10 free credits expired
    captured = ledger.capture(hold_id=held.id, amount=20)  # the run finishes after the expiry
    assert draws(captured) == [(lot.id, 20)]
    # The 10 credits its hold no longer needs are released — and expire at the next sweep.
    assert expire_due_credits() == 1
    lot.refresh_from_db()
    assert (lot.remaining_credits, lot.held_credits) == (0, 0)
    assert [r.amount for r in CreditTransaction.objects.filter(kind=TransactionKind.EXPIRY).order_by("id")] == [
        -10,
        -10,
    ]
    assert reconcile() == []


def test_expire_credits_command_logs_and_reports(user, caplog, django_capture_on_commit_callbacks):
    lot = grant(user, 7, expires_at=timezone.now() + DAY)
    expire_now(lot)
    with caplog.at_level("INFO", logger="billing"), django_capture_on_commit_callbacks(execute=True):
        call_command("expire_credits", stdout=open("/dev/null", "w"))  # noqa: SIM115
    assert f"[Billing] Expired 7 promotional credits of lot {lot.id} for user {user.id}" in caplog.text


@pytest.mark.django_db(transaction=True)
def test_concurrent_sweeps_expire_each_lot_exactly_once():
    users = [UserFactory() for _ in range(4)]
    lots = [grant(u, 10 + i, expires_at=timezone.now() + DAY) for u in users for i in range(3)]
    for lot in lots:
        expire_now(lot)
    in_threads(list(range(8)), lambda _: expire_due_credits(), threads=8)
    rows = CreditTransaction.objects.filter(kind=TransactionKind.EXPIRY)
    assert rows.count() == len(lots)
    assert sorted(-r.amount for r in rows) == sorted(lot.original_credits for lot in lots)
    assert all(lot.remaining_credits == 0 for lot in CreditLot.objects.all())
    assert reconcile() == []


# --- refunds follow their purchase ---------------------------------------------------------------


def test_a_refund_claws_back_from_its_own_lot_and_what_was_spent_becomes_a_shortfall(user):
    purchase, own = bought(user, 100)
    promo = grant(user, 50, priority=1)  # spent after the purchase
    ledger.charge(user_id=user.id, amount=60, agent_id="a")  # all from the purchase's lot
    result = ledger.clawback(
        user_id=user.id, amount=100, reason="refund", idempotency_key="refund-1", purchase_id=purchase.id
    )
    assert (result.clawed_back, result.shortfall) == (40, 60)
    assert draws(result) == [(own.id, 40)]
    assert remaining(own, promo) == [0, 50]  # the promotional credits were not taken
    assert reconcile() == []


def test_a_restored_clawback_is_a_paid_lot_of_the_purchase_again(user):
    purchase, own = bought(user, 100, cents=1000, expires_at=timezone.now() + 5 * DAY)
    ledger.clawback(user_id=user.id, amount=100, reason="refund", idempotency_key="r1", purchase_id=purchase.id)
    restored = ledger.restore_clawback(
        user_id=user.id, amount=40, reason="refund failed", purchase_id=purchase.id, idempotency_key="r2"
    )
    lot = lot_of(restored)
    assert (lot.category, lot.purchase_id, lot.cost_basis_cents, lot.expires_at) == (
        "paid",
        purchase.id,
        400,
        own.expires_at,
    )
    assert reconcile() == []


# --- reconcile_ledger catches corruption -----------------------------------------------------


def test_reconcile_fails_on_a_corrupted_lot(user):
    lot = grant(user, 30)
    ledger.charge(user_id=user.id, amount=10, agent_id="a")
    CreditLot.objects.filter(pk=lot.pk).update(remaining_credits=25)  # 5 credits appear from nowhere
    found = {drift.check for drift in reconcile()}
    assert {"lots", "lot"} <= found


def test_reconcile_fails_on_a_forged_draw(user):
    lot = grant(user, 30)
    charge = ledger.charge(user_id=user.id, amount=10, agent_id="a")
    second = grant(user, 5)
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO credit_draws (transaction_id, lot_id, credits) VALUES (%s, %s, 3)",
            [charge.transaction.id, second.id],
        )
    drift = reconcile()
    assert {d.check for d in drift} == {"lot", "draws"}, drift
    assert lot.id and any(f"transaction {charge.transaction.id}" in d.subject for d in drift)


def test_the_database_refuses_to_rewrite_a_draw(user):
    grant(user, 30)
    charge = ledger.charge(user_id=user.id, amount=10, agent_id="a")
    with pytest.raises(Exception, match="immutable"), connection.cursor() as cursor:
        cursor.execute("UPDATE credit_draws SET credits = 1 WHERE transaction_id = %s", [charge.transaction.id])


# --- admin -----------------------------------------------------------------------------------------


def test_the_admin_shows_lots_their_draws_and_each_rows_lots(admin_client, user):
    lot = grant(user, 30, category="paid")
    charge = ledger.charge(user_id=user.id, amount=10, agent_id="a")
    listing = admin_client.get(reverse("admin:billing_creditlot_changelist"))
    assert listing.status_code == 200 and user.email in listing.content.decode()
    detail = admin_client.get(reverse("admin:billing_creditlot_change", args=[lot.id])).content.decode()
    assert f"#{charge.transaction.id} charge: 10" in detail
    row = admin_client.get(reverse("admin:billing_credittransaction_change", args=[charge.transaction.id]))
    assert f"lot #{lot.id} (paid): 10" in row.content.decode()
    assert admin_client.post(reverse("admin:billing_creditlot_change", args=[lot.id]), {}).status_code == 403


def test_reconcile_names_credits_the_sweep_has_not_expired(user, settings):
    settings.EXPIRE_CREDITS_EVERY_SECONDS = 60
    lot = grant(user, 10, expires_at=timezone.now() + DAY)
    CreditLot.objects.filter(pk=lot.pk).update(expires_at=timezone.now() - timedelta(minutes=5))
    assert [(d.check, d.subject) for d in reconcile()] == [("expiry", f"lot {lot.id}")]
    expire_due_credits()
    assert reconcile() == []
