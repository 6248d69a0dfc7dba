"""Wallets, the immutable ledger, holds and stored Stripe webhook events.

Only `billing.ledger` changes `balance_credits`/`held_credits` or writes
`CreditTransaction` rows; the constraints below make the database refuse what
the ledger must never do, whoever tries it.
"""

import base64
import secrets

from django.conf import settings
from django.db import models
from django.db.models import Case, F, Q, Value, When

from core.fields import KEY_MAX_LENGTH, ExactCharField


class Wallet(models.Model):
    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="wallet")
    balance_credits = models.BigIntegerField(default=0)
    held_credits = models.BigIntegerField(default=0)
    shortfall_credits = models.BigIntegerField(
        default=0, help_text="Credits clawed back by refunds/disputes that the balance could not cover."
    )
    # Spend caps (UTC days, calendar months): the user's own limits, Finance's ceilings (the lower
    # of the two applies), and what charges and pending holds have taken in the current period.
    daily_limit_credits = models.BigIntegerField(null=True, blank=True, help_text="The user's own daily cap.")
    monthly_limit_credits = models.BigIntegerField(null=True, blank=True, help_text="The user's own monthly cap.")
    finance_daily_limit_credits = models.BigIntegerField(
        null=True, blank=True, help_text="Finance's daily ceiling; the user cannot raise it."
    )
    finance_monthly_limit_credits = models.BigIntegerField(
        null=True, blank=True, help_text="Finance's monthly ceiling; the user cannot raise it."
    )
    spent_day = models.DateField(null=True, blank=True, help_text="The UTC day `spent_day_credits` counts.")
    spent_day_credits = models.BigIntegerField(default=0)
    spent_month = models.DateField(null=True, blank=True, help_text="The first day of the month counted.")
    spent_month_credits = models.BigIntegerField(default=0)
    # Balance alerts and auto-recharge (`billing.ledger.thresholds`): every change of the available
    # credits recomputes `balance_alert_state` from them and sets `crossed` to what it crossed.
    low_balance_threshold_credits = models.BigIntegerField(
        null=True, blank=True, help_text="balance.low below this many available credits (null: the default)."
    )
    balance_alert_state = models.PositiveSmallIntegerField(
        default=0, help_text="0 at or above the low-balance threshold, 1 below it, 2 at 0."
    )
    recharge_threshold_credits = models.BigIntegerField(
        null=True, blank=True, help_text="Auto-recharge below this many available credits (null: off)."
    )
    recharge_armed = models.BooleanField(
        default=True, help_text="False from a crossing until the credits are back at the threshold."
    )
    crossed = models.PositiveSmallIntegerField(
        default=0, help_text="What the last change crossed: 1 low, 2 depleted, 4 recovered, 8 recharge."
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        db_table = "credit_wallets"
        permissions = [
            ("grant_credits", "Can grant and debit credits"),
            ("settle_shortfall", "Can settle refund and dispute shortfalls"),
        ]
        constraints = [
            models.CheckConstraint(condition=Q(shortfall_credits__gte=0), name="wallet_shortfall_non_negative"),
            models.CheckConstraint(condition=Q(balance_credits__gte=0), name="wallet_balance_non_negative"),
            models.CheckConstraint(condition=Q(held_credits__gte=0), name="wallet_held_non_negative"),
            models.CheckConstraint(
                condition=Q(held_credits__lte=F("balance_credits")), name="wallet_held_within_balance"
            ),
            models.CheckConstraint(
                condition=Q(spent_day_credits__gte=0, spent_month_credits__gte=0), name="wallet_spent_non_negative"
            ),
            models.CheckConstraint(
                condition=(Q(daily_limit_credits__isnull=True) | Q(daily_limit_credits__gte=0))
                & (Q(monthly_limit_credits__isnull=True) | Q(monthly_limit_credits__gte=0))
                & (Q(finance_daily_limit_credits__isnull=True) | Q(finance_daily_limit_credits__gte=0))
                & (Q(finance_monthly_limit_credits__isnull=True) | Q(finance_monthly_limit_credits__gte=0)),
                name="wallet_limits_non_negative",
            ),
        ]

    def __str__(self) -> str:
        return f"Wallet of {self.user} ({self.balance_credits} credits)"

    @property
    def available_credits(self) -> int:
        return self.balance_credits - self.held_credits


class TransactionKind(models.TextChoices):
    PURCHASE = "purchase", "Purchase"
    GRANT = "grant", "Grant"
    CHARGE = "charge", "Charge"
    # Reserved by the contract's list of kinds (DESIGN.md §6), so clients may filter on it; no verb
    # writes it: a Stripe refund or dispute takes credits back as a `clawback` row.
    REFUND = "refund", "Refund"
    CLAWBACK = "clawback", "Claw-back"
    ADJUSTMENT = "adjustment", "Adjustment"
    EXPIRY = "expiry", "Expiry"


class ImmutableQuerySet(models.QuerySet):
    """Ledger rows are never updated or deleted; corrections are new rows."""

    def update(self, **kwargs):
        raise TypeError("Ledger rows are immutable: write a correcting transaction instead.")

    def delete(self):
        raise TypeError("Ledger rows are immutable: write a correcting transaction instead.")

    update.queryset_only = True
    delete.queryset_only = True


class CreditTransaction(models.Model):
    wallet = models.ForeignKey(Wallet, on_delete=models.PROTECT, related_name="transactions")
    kind = models.CharField(max_length=16, choices=TransactionKind.choices)
    amount = models.BigIntegerField(help_text="Signed change of the balance in credits.")
    balance_after = models.BigIntegerField()
    agent_id = models.CharField(max_length=64, null=True, blank=True)
    agent_run_id = models.UUIDField(null=True, blank=True)
    hold = models.ForeignKey(
        "billing.CreditHold", on_delete=models.PROTECT, null=True, blank=True, related_name="transactions"
    )
    stripe_payment_intent_id = ExactCharField(max_length=255, null=True, blank=True)
    stripe_checkout_session_id = ExactCharField(max_length=255, null=True, blank=True)
    stripe_event_id = ExactCharField(max_length=255, null=True, blank=True)
    reason = models.CharField(max_length=500, blank=True, default="")
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="+",
        help_text="The staff user who caused this row, if any.",
    )
    idempotency_key = ExactCharField(max_length=KEY_MAX_LENGTH, null=True, blank=True)
    request_fingerprint = ExactCharField(max_length=64, blank=True, default="")
    metadata = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=False)

    objects = ImmutableQuerySet.as_manager()

    class Meta:
        db_table = "credit_transactions"
        ordering = ["-created_at", "-id"]
        permissions = [
            ("export_transactions", "Can export ledger rows as CSV"),
            ("view_finance_reports", "Can view finance reports"),
        ]
        constraints = [
            models.UniqueConstraint(fields=["wallet", "idempotency_key"], name="uniq_txn_wallet_idempotency_key"),
            models.CheckConstraint(condition=~Q(amount=0), name="txn_amount_non_zero"),
            models.CheckConstraint(condition=Q(balance_after__gte=0), name="txn_balance_after_non_negative"),
            models.CheckConstraint(condition=Q(kind__in=TransactionKind.values), name="txn_kind_valid"),
        ]
        indexes = [
            models.Index(fields=["wallet", "created_at"], name="txn_wallet_history_idx"),
            models.Index(fields=["agent_id", "created_at"], name="txn_agent_usage_idx"),
            models.Index(fields=["kind", "created_at"], name="txn_kind_created_idx"),
            models.Index(fields=["stripe_payment_intent_id"], name="txn_payment_intent_idx"),
            models.Index(fields=["stripe_checkout_session_id"], name="txn_checkout_session_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.kind} {self.amount:+d} → {self.balance_after}"

    def save(self, *args, **kwargs):
        if not self._state.adding:
            raise TypeError("Ledger rows are immutable: write a correcting transaction instead.")
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        raise TypeError("Ledger rows are immutable: write a correcting transaction instead.")


class LotCategory(models.TextChoices):
    PAID = "paid", "Paid"
    PROMOTIONAL = "promotional", "Promotional"


class LotSource(models.TextChoices):
    PURCHASE = "purchase", "Purchase"
    GRANT = "grant", "Staff grant"
    ADJUSTMENT = "adjustment", "Staff adjustment"
    RESTORED_CLAWBACK = "restored_clawback", "Restored claw-back"
    OPENING = "opening", "Opening balance (before lots)"


class CreditLot(models.Model):
    """Credits that came in together (a purchase, a grant …): what is left of them, until when,
    and what was paid for them. A lot is never deleted; `remaining_credits` moves only through
    ledger verbs, each recording its draws. Pending holds pin `held_credits` of it.

    Invariants (the ledger keeps them; `reconcile_ledger` checks them): per wallet,
    balance == Σ remaining and held == Σ held; per lot, remaining == original − Σ draws and
    held == Σ pins of pending holds."""

    wallet = models.ForeignKey(Wallet, on_delete=models.PROTECT, related_name="lots")
    category = models.CharField(max_length=16, choices=LotCategory.choices)
    source = models.CharField(max_length=24, choices=LotSource.choices)
    original_credits = models.BigIntegerField()
    remaining_credits = models.BigIntegerField()
    held_credits = models.BigIntegerField(default=0, help_text="Pinned by pending holds.")
    expires_at = models.DateTimeField(null=True, blank=True, help_text="Empty: never expires.")
    priority = models.IntegerField(default=0, help_text="Lower is spent first.")
    cost_basis_cents = models.BigIntegerField(
        default=0, help_text="What was paid for all of the lot's original credits, in cents (0 when promotional)."
    )
    currency = models.CharField(max_length=3, blank=True, default="")
    transaction = models.OneToOneField(
        "billing.CreditTransaction",
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="lot",
        help_text="The ledger row that brought the credits in (none for an opening lot).",
    )
    purchase = models.ForeignKey(
        "billing.Purchase", on_delete=models.PROTECT, null=True, blank=True, related_name="lots"
    )
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    # Kept by the database: whether credits are left. The wallet's open lots are found by it
    # (`lot_wallet_is_open_idx`), and a debit that leaves credits in a lot changes no index entry
    # (an index over `remaining_credits` itself was rewritten by every charge).
    is_open = models.GeneratedField(
        expression=Case(When(remaining_credits__gt=0, then=Value(True)), default=Value(False)),
        output_field=models.BooleanField(),
        db_persist=True,
    )

    class Meta:
        db_table = "credit_lots"
        constraints = [
            models.CheckConstraint(condition=Q(original_credits__gt=0), name="lot_original_positive"),
            models.CheckConstraint(
                condition=Q(held_credits__gte=0, remaining_credits__gte=F("held_credits"))
                & Q(remaining_credits__lte=F("original_credits")),
                name="lot_held_remaining_within_original",
            ),
            models.CheckConstraint(condition=Q(category__in=LotCategory.values), name="lot_category_valid"),
            models.CheckConstraint(
                condition=Q(cost_basis_cents__gte=0) & (Q(category=LotCategory.PAID) | Q(cost_basis_cents=0)),
                name="lot_cost_basis_paid_only",
            ),
        ]
        indexes = [
            models.Index(fields=["wallet", "is_open"], name="lot_wallet_is_open_idx"),
            models.Index(fields=["expires_at"], name="lot_expiry_idx"),
        ]

    def __str__(self) -> str:
        return f"Lot {self.pk}: {self.remaining_credits}/{self.original_credits} {self.category}"

    @property
    def available_credits(self) -> int:
        return self.remaining_credits - self.held_credits


class CreditDraw(models.Model):
    """Credits a debit (charge, capture, claw-back, debit adjustment, expiry) took from one lot."""

    transaction = models.ForeignKey("billing.CreditTransaction", on_delete=models.PROTECT, related_name="draws")
    lot = models.ForeignKey(CreditLot, on_delete=models.PROTECT, related_name="draws")
    credits = models.BigIntegerField()

    objects = ImmutableQuerySet.as_manager()

    class Meta:
        db_table = "credit_draws"
        constraints = [
            models.CheckConstraint(condition=Q(credits__gt=0), name="draw_credits_positive"),
            models.UniqueConstraint(fields=["transaction", "lot"], name="uniq_draw_transaction_lot"),
        ]

    def __str__(self) -> str:
        return f"{self.credits} from lot {self.lot_id}"


class HoldStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    CAPTURED = "captured", "Captured"
    RELEASED = "released", "Released"
    EXPIRED = "expired", "Expired"


class CreditHold(models.Model):
    """Credits reserved for a run; they count in `held_credits` while pending."""

    wallet = models.ForeignKey(Wallet, on_delete=models.PROTECT, related_name="holds")
    amount = models.BigIntegerField()
    status = models.CharField(max_length=16, choices=HoldStatus.choices, default=HoldStatus.PENDING)
    agent_id = models.CharField(max_length=64, null=True, blank=True)
    idempotency_key = ExactCharField(max_length=KEY_MAX_LENGTH, null=True, blank=True)
    request_fingerprint = ExactCharField(max_length=64, blank=True, default="")
    expires_at = models.DateTimeField()
    created_at = models.DateTimeField(auto_now_add=True)
    settled_at = models.DateTimeField(null=True, blank=True)
    agent_run_id = models.UUIDField(
        null=True, blank=True, unique=True, help_text="The agent run this hold pays for; only that run settles it."
    )

    class Meta:
        db_table = "credit_holds"
        constraints = [
            models.CheckConstraint(condition=Q(amount__gt=0), name="hold_amount_positive"),
            models.CheckConstraint(condition=Q(status__in=HoldStatus.values), name="hold_status_valid"),
            models.UniqueConstraint(fields=["wallet", "idempotency_key"], name="uniq_hold_wallet_idempotency_key"),
        ]
        indexes = [
            models.Index(fields=["status", "expires_at"], name="hold_status_expiry_idx"),
            models.Index(fields=["wallet", "status"], name="hold_wallet_status_idx"),
        ]

    def __str__(self) -> str:
        return f"Hold {self.pk}: {self.amount} ({self.status})"


class CreditHoldLot(models.Model):
    """Credits a hold reserved from one lot: capture draws exactly these, release frees them."""

    hold = models.ForeignKey(CreditHold, on_delete=models.PROTECT, related_name="pins")
    lot = models.ForeignKey(CreditLot, on_delete=models.PROTECT, related_name="pins")
    credits = models.BigIntegerField()

    class Meta:
        db_table = "credit_hold_lots"
        constraints = [
            models.CheckConstraint(condition=Q(credits__gt=0), name="pin_credits_positive"),
            models.UniqueConstraint(fields=["hold", "lot"], name="uniq_pin_hold_lot"),
        ]

    def __str__(self) -> str:
        return f"{self.credits} of lot {self.lot_id} for hold {self.hold_id}"


class StripePaymentIntentLock(models.Model):
    """A row per payment intent that every webhook handler touching it locks first, so a refund
    and the checkout it refunds are processed one after the other, whatever order they arrive in."""

    payment_intent_id = ExactCharField(max_length=255, primary_key=True)

    class Meta:
        db_table = "stripe_payment_intent_locks"

    def __str__(self) -> str:
        return self.payment_intent_id


class WebhookEventStatus(models.TextChoices):
    RECEIVED = "received", "Received"
    PROCESSED = "processed", "Processed"
    IGNORED = "ignored", "Ignored"
    FAILED = "failed", "Failed"


class StripeWebhookEvent(models.Model):
    """Every verified Stripe event, stored once before it is processed."""

    stripe_event_id = ExactCharField(max_length=255, unique=True)
    type = models.CharField(max_length=100)
    payload = models.JSONField()
    status = models.CharField(max_length=16, choices=WebhookEventStatus.choices, default=WebhookEventStatus.RECEIVED)
    attempts = models.PositiveIntegerField(default=0)
    error = models.TextField(blank=True, default="")
    received_at = models.DateTimeField(auto_now_add=True)
    processed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "stripe_webhook_events"
        permissions = [("reprocess_webhook_events", "Can reprocess failed Stripe webhook events")]
        indexes = [models.Index(fields=["status", "received_at"], name="webhook_status_idx")]

    def __str__(self) -> str:
        return f"{self.stripe_event_id} ({self.type}, {self.status})"


class PurchaseStatus(models.TextChoices):
    PENDING = "pending", "Pending (checkout created)"
    AWAITING_PAYMENT = "awaiting_payment", "Awaiting asynchronous payment"
    PAID = "paid", "Paid (credits granted)"
    FAILED = "failed", "Payment failed"


class Purchase(models.Model):
    """One Checkout Session for a credit package; credits are granted at most once per session."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="purchases")
    package_id = models.CharField(max_length=64)
    credits = models.BigIntegerField()
    amount_cents = models.BigIntegerField(help_text="What the package costs; the paid session must match.")
    currency = models.CharField(max_length=3)
    status = models.CharField(max_length=20, choices=PurchaseStatus.choices, default=PurchaseStatus.PENDING)
    stripe_checkout_session_id = ExactCharField(
        max_length=255, unique=True, help_text="The Checkout Session, or auto-recharge-N for auto-recharge attempt N."
    )
    stripe_payment_intent_id = ExactCharField(max_length=255, null=True, blank=True)
    created_by_checkout = models.BooleanField(
        default=True, help_text="False for sessions from Payment Links or the dashboard, first seen by the webhook."
    )
    transaction = models.OneToOneField(
        CreditTransaction, on_delete=models.PROTECT, null=True, blank=True, related_name="purchase"
    )
    refunded_cents = models.BigIntegerField(default=0)
    disputed_cents = models.BigIntegerField(default=0)
    clawed_back_credits = models.BigIntegerField(
        default=0, help_text="Credits taken back for refunds/disputes, including any recorded shortfall."
    )
    credits_expire_in_days = models.PositiveIntegerField(
        null=True, blank=True, help_text="From the package when bought: the credits expire this long after payment."
    )
    failure_reason = models.CharField(max_length=500, blank=True, default="")
    reversed_stripe_ids = models.JSONField(
        default=list, blank=True, help_text="Failed refunds and won disputes already given back (each once)."
    )
    created_at = models.DateTimeField(auto_now_add=True)
    paid_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        db_table = "credit_purchases"
        ordering = ["-created_at"]
        constraints = [
            models.CheckConstraint(condition=Q(credits__gt=0), name="purchase_credits_positive"),
            models.CheckConstraint(condition=Q(amount_cents__gt=0), name="purchase_amount_positive"),
            models.CheckConstraint(
                condition=Q(clawed_back_credits__gte=0, clawed_back_credits__lte=F("credits")),
                name="purchase_clawback_within_credits",
            ),
        ]
        indexes = [
            models.Index(fields=["stripe_payment_intent_id"], name="purchase_payment_intent_idx"),
            models.Index(fields=["status", "created_at"], name="purchase_status_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.package_id} for {self.user_id} ({self.status})"

    @property
    def clawback_target_credits(self) -> int:
        """The credits that should have been taken back: the purchase's share refunded or
        disputed so far (never more than all of it), rounded down."""
        covered_cents = min(self.amount_cents, self.refunded_cents + self.disputed_cents)
        return self.credits * covered_cents // self.amount_cents


class CreditShortfall(models.Model):
    """Credits a refund or dispute should have taken back but the balance could not cover.

    `Wallet.shortfall_credits` is the sum of open shortfalls (amount − cancelled); while it is
    positive the wallet refuses charges and holds until staff settle it.
    """

    wallet = models.ForeignKey(Wallet, on_delete=models.PROTECT, related_name="shortfalls")
    purchase = models.ForeignKey(Purchase, on_delete=models.PROTECT, null=True, blank=True, related_name="shortfalls")
    amount = models.BigIntegerField()
    idempotency_key = ExactCharField(max_length=KEY_MAX_LENGTH, help_text="The claw-back that recorded it.")
    created_at = models.DateTimeField(auto_now_add=True)
    settled_at = models.DateTimeField(null=True, blank=True)
    settled_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    collected_credits = models.BigIntegerField(default=0)
    written_off_credits = models.BigIntegerField(default=0)
    cancelled_credits = models.BigIntegerField(
        default=0, help_text="The part no longer owed because the refund failed or the dispute was won."
    )
    settlement_reason = models.CharField(max_length=500, blank=True, default="")

    class Meta:
        db_table = "credit_shortfalls"
        constraints = [
            models.CheckConstraint(condition=Q(amount__gt=0), name="shortfall_amount_positive"),
            models.CheckConstraint(
                condition=Q(cancelled_credits__gte=0, cancelled_credits__lte=F("amount")),
                name="shortfall_cancelled_within_amount",
            ),
            models.UniqueConstraint(fields=["wallet", "idempotency_key"], name="uniq_shortfall_wallet_key"),
        ]
        indexes = [models.Index(fields=["wallet", "settled_at"], name="shortfall_wallet_open_idx")]

    def __str__(self) -> str:
        return f"Shortfall of {self.amount} on {self.wallet_id}"


class ApprovalStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    APPROVED = "approved", "Approved"
    REJECTED = "rejected", "Rejected"


class CreditApprovalRequest(models.Model):
    """A staff grant or debit above `FINANCE_APPROVAL_THRESHOLD`, waiting for a second Finance user.

    Nothing moves while it is pending. Approving executes it through the ledger (`transaction`);
    rejecting moves nothing. It is decided once, by someone other than the requester and the
    target user — the constraints below refuse anything else, whoever tries it.
    """

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.PROTECT,
        related_name="credit_approval_requests",
        help_text="Whose credits change.",
    )
    credits = models.BigIntegerField(help_text="Signed: positive grants, negative debits.")
    reason = models.CharField(max_length=500)
    requested_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    requested_at = models.DateTimeField(auto_now_add=True)
    status = models.CharField(max_length=16, choices=ApprovalStatus.choices, default=ApprovalStatus.PENDING)
    decided_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    decided_at = models.DateTimeField(null=True, blank=True)
    decision_note = models.CharField(max_length=500, blank=True, default="")
    transaction = models.OneToOneField(
        CreditTransaction,
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="approval_request",
        help_text="The ledger row the approval wrote.",
    )
    idempotency_key = ExactCharField(
        max_length=KEY_MAX_LENGTH, null=True, blank=True, help_text="Of the request (API header or admin form)."
    )
    request_fingerprint = ExactCharField(max_length=64, blank=True, default="")
    lot_category = models.CharField(
        max_length=16,
        choices=LotCategory.choices,
        null=True,
        blank=True,
        default=LotCategory.PROMOTIONAL,
        help_text="A grant's lot category (empty for a debit).",
    )
    lot_expires_at = models.DateTimeField(
        null=True, blank=True, help_text="When a grant's credits expire (empty: never; always empty for a debit)."
    )

    class Meta:
        db_table = "credit_approval_requests"
        ordering = ["-requested_at", "-id"]
        permissions = [("approve_credit_requests", "Can approve or reject large grants and debits")]
        constraints = [
            models.UniqueConstraint(fields=["user", "idempotency_key"], name="uniq_approval_user_idempotency_key"),
            models.CheckConstraint(condition=~Q(credits=0), name="approval_credits_non_zero"),
            models.CheckConstraint(condition=Q(status__in=ApprovalStatus.values), name="approval_status_valid"),
            models.CheckConstraint(
                condition=Q(status=ApprovalStatus.PENDING, decided_by__isnull=True, decided_at__isnull=True)
                | (
                    ~Q(status=ApprovalStatus.PENDING)
                    & Q(decided_by__isnull=False, decided_at__isnull=False)
                    & ~Q(decided_by=F("requested_by"))
                    & ~Q(decided_by=F("user"))
                ),
                name="approval_decided_once_by_another",
            ),
            models.CheckConstraint(
                condition=Q(status=ApprovalStatus.APPROVED, transaction__isnull=False)
                | (~Q(status=ApprovalStatus.APPROVED) & Q(transaction__isnull=True)),
                name="approval_transaction_iff_approved",
            ),
            # NULL passes a CHECK, so each side says `isnull` explicitly.
            models.CheckConstraint(
                condition=Q(credits__gt=0, lot_category__isnull=False, lot_category__in=LotCategory.values)
                | Q(credits__lt=0, lot_category__isnull=True, lot_expires_at__isnull=True),
                name="approval_lot_terms_grants_only",
            ),
        ]
        indexes = [models.Index(fields=["status", "requested_at"], name="approval_status_idx")]

    def __str__(self) -> str:
        return f"Request #{self.pk}: {self.credits:+d} credits ({self.status})"


def _webhook_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


class WebhookEndpoint(models.Model):
    """A URL of the product's backend that receives our events, signed with its own secret
    (Standard Webhooks). Staff register them in the admin."""

    url = models.URLField(max_length=500, help_text="https://… (http only for loopback in development).")
    description = models.CharField(max_length=200, blank=True, default="")
    secret = models.CharField(max_length=100, default=_webhook_secret, help_text="whsec_…: give it to the receiver.")
    event_types = models.JSONField(default=list, blank=True, help_text="Event types to send; empty: all of them.")
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "webhook_endpoints"

    def __str__(self) -> str:
        return self.url


class OutboxEvent(models.Model):
    """An event, written in the same transaction as the change that caused it (the outbox):
    it exists if and only if the change committed. `event_id` is the `webhook-id` receivers
    de-duplicate on."""

    event_id = ExactCharField(max_length=64, unique=True)
    type = models.CharField(max_length=64)
    payload = models.JSONField()
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    email_pending = models.BooleanField(default=False, help_text="The user is to be e-mailed about it.")
    emailed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "outbox_events"
        indexes = [
            models.Index(fields=["type", "created_at"], name="outbox_type_created_idx"),
            models.Index(fields=["email_pending"], name="outbox_email_pending_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.type} {self.event_id}"


class DeliveryStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    DELIVERED = "delivered", "Delivered"
    FAILED = "failed", "Failed (gave up)"


class WebhookDelivery(models.Model):
    """One event for one endpoint: retried with back-off until a 2xx answer, for up to
    `WEBHOOK_RETRY_HOURS`."""

    event = models.ForeignKey(OutboxEvent, on_delete=models.PROTECT, related_name="deliveries")
    endpoint = models.ForeignKey(WebhookEndpoint, on_delete=models.PROTECT, related_name="deliveries")
    status = models.CharField(max_length=16, choices=DeliveryStatus.choices, default=DeliveryStatus.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField()
    last_status_code = models.PositiveIntegerField(null=True, blank=True)
    last_error = models.CharField(max_length=500, blank=True, default="")
    delivered_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "webhook_deliveries"
        constraints = [
            models.UniqueConstraint(fields=["event", "endpoint"], name="uniq_delivery_event_endpoint"),
            models.CheckConstraint(condition=Q(status__in=DeliveryStatus.values), name="delivery_status_valid"),
        ]
        indexes = [models.Index(fields=["status", "next_attempt_at"], name="delivery_due_idx")]

    def __str__(self) -> str:
        return f"{self.event} → {self.endpoint} ({self.status})"


class WebhookAttempt(models.Model):
    """One try of a delivery: what the receiver answered and how long it took."""

    delivery = models.ForeignKey(WebhookDelivery, on_delete=models.CASCADE, related_name="attempt_log")
    attempted_at = models.DateTimeField(auto_now_add=True)
    status_code = models.PositiveIntegerField(null=True, blank=True)
    duration_ms = models.PositiveIntegerField(default=0)
    error = models.CharField(max_length=500, blank=True, default="")
    response_excerpt = models.CharField(max_length=500, blank=True, default="")

    class Meta:
        db_table = "webhook_attempts"

    def __str__(self) -> str:
        return f"{self.delivery_id} at {self.attempted_at}: {self.status_code or self.error}"


class SavedPaymentMethod(models.Model):
    """The card a user saved (Checkout in setup mode) for off-session auto-recharges."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="payment_method")
    stripe_payment_method_id = ExactCharField(max_length=255)
    stripe_customer_id = ExactCharField(max_length=255)
    brand = models.CharField(max_length=32, blank=True, default="")
    last4 = models.CharField(max_length=4, blank=True, default="")
    saved_at = models.DateTimeField(help_text="When Stripe confirmed it (the event's time).")
    removed_at = models.DateTimeField(
        null=True, blank=True, help_text="When the user removed it (kept, so a late event cannot bring it back)."
    )

    class Meta:
        db_table = "saved_payment_methods"

    def __str__(self) -> str:
        return f"{self.brand or 'card'} {self.last4 or self.stripe_payment_method_id} of {self.user}"


class AutoRecharge(models.Model):
    """A user's auto-recharge: buy `package_id` off-session when the available credits fall
    below `threshold_credits`, at most `monthly_limit_cents` per calendar month."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="auto_recharge")
    enabled = models.BooleanField(default=False)
    threshold_credits = models.BigIntegerField(default=0)
    package_id = models.CharField(max_length=64, blank=True, default="")
    monthly_limit_cents = models.BigIntegerField(default=0)
    failures_in_row = models.PositiveSmallIntegerField(default=0)
    disabled_reason = models.CharField(max_length=500, blank=True, default="")
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        db_table = "auto_recharges"
        constraints = [
            models.CheckConstraint(
                condition=Q(threshold_credits__gte=0, monthly_limit_cents__gte=0), name="auto_recharge_non_negative"
            ),
        ]

    def __str__(self) -> str:
        return f"Auto-recharge of {self.user} ({'on' if self.enabled else 'off'})"


class RechargeStatus(models.TextChoices):
    PENDING = "pending", "Pending (crossing recorded)"
    PROCESSING = "processing", "Processing (payment asked of Stripe)"
    SUCCEEDED = "succeeded", "Succeeded (credits granted)"
    FAILED = "failed", "Failed"
    SKIPPED = "skipped", "Skipped (monthly limit, no card, turned off)"


IN_FLIGHT = (RechargeStatus.PENDING, RechargeStatus.PROCESSING)


class RechargeAttempt(models.Model):
    """One crossing of a wallet's auto-recharge threshold: at most one payment, granted at most once."""

    wallet = models.ForeignKey(Wallet, on_delete=models.PROTECT, related_name="recharge_attempts")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    package_id = models.CharField(max_length=64)
    status = models.CharField(max_length=16, choices=RechargeStatus.choices, default=RechargeStatus.PENDING)
    available_credits = models.BigIntegerField(help_text="The available credits left by the crossing debit.")
    credits = models.BigIntegerField(null=True, blank=True, help_text="What the package gives (when started).")
    amount_cents = models.BigIntegerField(null=True, blank=True, help_text="What was asked of the card.")
    currency = models.CharField(max_length=3, blank=True, default="")
    charged_cents = models.BigIntegerField(null=True, blank=True, help_text="What Stripe says was received.")
    credited_credits = models.BigIntegerField(null=True, blank=True, help_text="What the ledger granted.")
    stripe_payment_intent_id = ExactCharField(max_length=255, null=True, blank=True)
    purchase = models.OneToOneField(
        Purchase, on_delete=models.PROTECT, null=True, blank=True, related_name="recharge_attempt"
    )
    failure_code = models.CharField(max_length=64, blank=True, default="")
    failure_reason = models.CharField(max_length=500, blank=True, default="")
    created_at = models.DateTimeField()
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "auto_recharge_attempts"
        ordering = ["-created_at"]
        constraints = [
            models.CheckConstraint(condition=Q(status__in=RechargeStatus.values), name="recharge_status_valid"),
        ]
        indexes = [
            models.Index(fields=["wallet", "status"], name="recharge_wallet_status_idx"),
            models.Index(fields=["status", "created_at"], name="recharge_status_created_idx"),
            models.Index(fields=["stripe_payment_intent_id"], name="recharge_payment_intent_idx"),
        ]

    def __str__(self) -> str:
        return f"Auto-recharge {self.pk} of {self.user} ({self.status})"
