"""Finance staff's console. Ledger rows and balances are never editable here, not even by
superusers; money moves only through the ledger verbs (grant/debit forms, approvals, reprocessing)."""

from __future__ import annotations

import json

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied
from django.db.models import Count, Q, Sum
from django.http import HttpResponseNotAllowed, HttpResponseRedirect, StreamingHttpResponse
from django.shortcuts import get_object_or_404
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join
from django.utils.http import urlencode

from billing import approvals, events, ledger
from billing.admin_views import user_credits_view
from billing.exports import SafeWriter
from billing.models import (
    ApprovalStatus,
    AutoRecharge,
    CreditApprovalRequest,
    CreditHold,
    CreditLot,
    CreditShortfall,
    CreditTransaction,
    OutboxEvent,
    Purchase,
    RechargeAttempt,
    SavedPaymentMethod,
    StripeWebhookEvent,
    Wallet,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
    WebhookEventStatus,
)
from billing.selectors import transactions_for_user
from billing.stripe_webhooks import process_event
from users.admin import UserAdmin
from users.models import User

EXPORT_CHUNK = 2000
RECENT_USER_TRANSACTIONS = 10
EXPORT_COLUMNS = [
    ("id", "id"),
    ("created_at", "created_at"),
    ("user_email", "wallet__user__email"),
    ("kind", "kind"),
    ("amount", "amount"),
    ("balance_after", "balance_after"),
    ("agent_id", "agent_id"),
    ("agent_run_id", "agent_run_id"),
    ("hold_id", "hold_id"),
    ("stripe_checkout_session_id", "stripe_checkout_session_id"),
    ("stripe_payment_intent_id", "stripe_payment_intent_id"),
    ("stripe_event_id", "stripe_event_id"),
    ("reason", "reason"),
    ("actor_email", "actor__email"),
]


def admin_link(obj, label: str | None = None) -> str:
    if obj is None:
        return "—"
    url = reverse(f"admin:{obj._meta.app_label}_{obj._meta.model_name}_change", args=[obj.pk])
    return format_html('<a href="{}">{}</a>', url, label or str(obj))


class ReadOnlyAdmin(admin.ModelAdmin):
    """No add, change or delete — for superusers too."""

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(Wallet)
class WalletAdmin(ReadOnlyAdmin):
    list_display = [
        "user_link",
        "balance_credits",
        "held_credits",
        "available_credits",
        "shortfall_credits",
        "updated_at",
    ]
    search_fields = ["user__email"]
    list_select_related = ["user"]

    @admin.display(description="user", ordering="user__email")
    def user_link(self, wallet):
        return admin_link(wallet.user)


class _Echo:
    def write(self, value):
        return value


@admin.register(CreditTransaction)
class CreditTransactionAdmin(ReadOnlyAdmin):
    list_display = [
        "id",
        "created_at",
        "user_link",
        "kind",
        "amount",
        "balance_after",
        "agent_id",
        "reason",
        "hold_link",
    ]
    list_filter = ["kind", "agent_id", "created_at"]
    search_fields = ["wallet__user__email", "stripe_payment_intent_id", "stripe_checkout_session_id"]
    list_select_related = ["wallet__user", "hold"]
    readonly_fields = ["lots_of_row"]
    date_hierarchy = "created_at"
    show_full_result_count = False

    @admin.display(description="user", ordering="wallet__user__email")
    def user_link(self, row):
        return admin_link(row.wallet.user)

    @admin.display(description="hold")
    def hold_link(self, row):
        return admin_link(row.hold, f"#{row.hold_id}") if row.hold_id else "—"

    @admin.display(description="lots (drawn from, or brought in)")
    def lots_of_row(self, row):
        lot = CreditLot.objects.filter(transaction=row).first()
        if lot is not None:
            return admin_link(lot, f"lot #{lot.id} ({lot.category})")
        draws = row.draws.select_related("lot").order_by("id")
        return (
            format_html_join(
                ", ", "{}", ((admin_link(d.lot, f"lot #{d.lot_id} ({d.lot.category}): {d.credits}"),) for d in draws)
            )
            or "—"
        )

    def get_urls(self):
        return [
            path("export/", self.admin_site.admin_view(self.export_view), name="billing_credittransaction_export"),
            *super().get_urls(),
        ]

    def changelist_view(self, request, extra_context=None):
        response = super().changelist_view(request, extra_context=extra_context)
        context = getattr(response, "context_data", None)
        if context and "cl" in context:
            filtered = context["cl"].queryset.order_by()
            context["totals"] = filtered.aggregate(
                rows=Count("id"),
                credits_in=Sum("amount", filter=Q(amount__gt=0)),
                credits_out=Sum("amount", filter=Q(amount__lt=0)),
                net=Sum("amount"),
            )
            context["totals_by_kind"] = list(
                filtered.values("kind").annotate(rows=Count("id"), credits=Sum("amount")).order_by("kind")
            )
            context["can_export"] = request.user.has_perm("billing.export_transactions")
        return response

    def export_view(self, request):
        """The filtered changelist as CSV, streamed in keyset-paged chunks (flat memory)."""
        if not request.user.has_perm("billing.export_transactions"):
            raise PermissionDenied
        changelist = self.get_changelist_instance(request)
        filtered = changelist.get_queryset(request).order_by("-id")
        fields = [field for _, field in EXPORT_COLUMNS]

        def rows():
            yield [name for name, _ in EXPORT_COLUMNS]
            last_id = None
            while True:
                chunk = filtered if last_id is None else filtered.filter(id__lt=last_id)
                batch = list(chunk.values_list(*fields)[:EXPORT_CHUNK])
                if not batch:
                    return
                yield from batch
                last_id = batch[-1][0]

        writer = SafeWriter(_Echo())
        response = StreamingHttpResponse((writer.writerow(row) for row in rows()), content_type="text/csv")
        response["Content-Disposition"] = 'attachment; filename="credit_transactions.csv"'
        return response


@admin.register(CreditLot)
class CreditLotAdmin(ReadOnlyAdmin):
    """Every lot of credits, what is left of it and where it went (its draws)."""

    list_display = [
        "id",
        "user_link",
        "category",
        "source",
        "original_credits",
        "remaining_credits",
        "held_credits",
        "expires_at",
        "priority",
        "cost_basis_cents",
        "created_at",
    ]
    list_filter = ["category", "source", "expires_at"]
    search_fields = ["wallet__user__email"]
    list_select_related = ["wallet__user"]
    readonly_fields = ["draws_of_lot"]
    show_full_result_count = False

    @admin.display(description="user", ordering="wallet__user__email")
    def user_link(self, lot):
        return admin_link(lot.wallet.user)

    @admin.display(description="draws (ledger row: credits)")
    def draws_of_lot(self, lot):
        draws = lot.draws.select_related("transaction").order_by("id")[:200]
        return (
            format_html_join(
                ", ",
                "{}",
                (
                    (admin_link(draw.transaction, f"#{draw.transaction_id} {draw.transaction.kind}: {draw.credits}"),)
                    for draw in draws
                ),
            )
            or "—"
        )


@admin.register(CreditHold)
class CreditHoldAdmin(ReadOnlyAdmin):
    list_display = ["id", "user_link", "amount", "status", "agent_id", "expires_at", "created_at", "settled_at"]
    list_filter = ["status", "agent_id"]
    search_fields = ["wallet__user__email"]
    list_select_related = ["wallet__user"]
    readonly_fields = ["runs", "transactions_of_hold"]

    @admin.display(description="user", ordering="wallet__user__email")
    def user_link(self, hold):
        return admin_link(hold.wallet.user)

    @admin.display(description="agent runs")
    def runs(self, hold):
        return format_html_join(", ", "{}", ((admin_link(run, str(run.id)),) for run in hold.runs.all())) or "—"

    @admin.display(description="ledger rows")
    def transactions_of_hold(self, hold):
        rows = hold.transactions.all()
        return format_html_join(", ", "{}", ((admin_link(row, f"#{row.id} {row.amount:+d}"),) for row in rows)) or "—"


@admin.register(Purchase)
class PurchaseAdmin(ReadOnlyAdmin):
    list_display = [
        "stripe_checkout_session_id",
        "user_link",
        "package_id",
        "credits",
        "amount_cents",
        "currency",
        "status",
        "clawed_back_credits",
        "transaction_link",
        "created_at",
        "paid_at",
    ]
    list_filter = ["status", "package_id", "created_by_checkout"]
    search_fields = ["user__email", "stripe_checkout_session_id", "stripe_payment_intent_id"]
    list_select_related = ["user", "transaction"]

    @admin.display(description="user", ordering="user__email")
    def user_link(self, purchase):
        return admin_link(purchase.user)

    @admin.display(description="ledger row")
    def transaction_link(self, purchase):
        return admin_link(purchase.transaction, f"#{purchase.transaction_id}") if purchase.transaction_id else "—"


@admin.register(CreditShortfall)
class CreditShortfallAdmin(ReadOnlyAdmin):
    list_display = [
        "wallet",
        "amount",
        "purchase",
        "created_at",
        "settled_at",
        "collected_credits",
        "written_off_credits",
    ]
    list_filter = ["settled_at"]
    list_select_related = ["wallet__user", "purchase"]


@admin.register(StripeWebhookEvent)
class StripeWebhookEventAdmin(ReadOnlyAdmin):
    list_display = ["stripe_event_id", "type", "status", "attempts", "received_at", "processed_at", "short_error"]
    list_filter = ["status", "type"]
    search_fields = ["stripe_event_id"]
    readonly_fields = [
        "stripe_event_id",
        "type",
        "status",
        "attempts",
        "error",
        "received_at",
        "processed_at",
        "pretty_payload",
    ]
    exclude = ["payload"]
    actions = ["reprocess"]

    @admin.display(description="error")
    def short_error(self, event):
        return (event.error[:80] + "…") if len(event.error) > 80 else event.error

    @admin.display(description="payload")
    def pretty_payload(self, event):
        return format_html(
            '<pre style="white-space: pre-wrap; max-height: 40em; overflow: auto">{}</pre>',
            json.dumps(event.payload, indent=2, sort_keys=True),
        )

    def has_reprocess_permission(self, request):
        return request.user.has_perm("billing.reprocess_webhook_events")

    @admin.action(description="Reprocess the selected failed events", permissions=["reprocess"])
    def reprocess(self, request, queryset):
        outcomes: dict[str, int] = {}
        for event in queryset.filter(status=WebhookEventStatus.FAILED):
            try:
                status = process_event(event_pk=event.pk).status
            except Exception:
                status = "error"
            outcomes[status] = outcomes.get(status, 0) + 1
        skipped = queryset.exclude(status=WebhookEventStatus.FAILED).count()
        summary = ", ".join(f"{n} {status}" for status, n in sorted(outcomes.items())) or "nothing reprocessed"
        level = messages.WARNING if outcomes.get("failed") or outcomes.get("error") else messages.SUCCESS
        self.message_user(request, f"Reprocessed: {summary}; {skipped} not failed, skipped.", level)


class DecisionForm(forms.Form):
    note = forms.CharField(max_length=500, required=False, strip=True)


@admin.register(CreditApprovalRequest)
class CreditApprovalRequestAdmin(ReadOnlyAdmin):
    """Large grants and debits awaiting a second Finance user, and every decision taken on them.

    The request page has Approve / Reject buttons (POST, CSRF-protected) for users with
    `billing.approve_credit_requests`; each decision, and each refused approval, is also logged
    in the admin history (LogEntry)."""

    list_display = [
        "id",
        "requested_at",
        "user_link",
        "credits",
        "lot_category",
        "lot_expires_at",
        "reason",
        "requested_by",
        "status",
        "decided_by",
        "decided_at",
        "transaction_link",
    ]
    list_filter = [
        "status",
        "requested_at",
        "decided_at",
        ("requested_by", admin.RelatedOnlyFieldListFilter),
        ("decided_by", admin.RelatedOnlyFieldListFilter),
    ]
    search_fields = ["user__email", "requested_by__email", "decided_by__email", "reason"]
    list_select_related = ["user", "requested_by", "decided_by", "transaction"]
    date_hierarchy = "requested_at"
    fields = [
        "user_link",
        "wallet_now",
        "credits",
        "lot_category",
        "lot_expires_at",
        "reason",
        "requested_by",
        "requested_at",
        "idempotency_key",
        "status",
        "decided_by",
        "decided_at",
        "decision_note",
        "transaction_link",
    ]
    readonly_fields = fields
    change_form_template = "admin/billing/creditapprovalrequest/change_form.html"

    @admin.display(description="user", ordering="user__email")
    def user_link(self, approval):
        return admin_link(approval.user)

    @admin.display(description="wallet now")
    def wallet_now(self, approval):
        wallet = Wallet.objects.filter(user_id=approval.user_id).first()
        if wallet is None:
            return "No wallet yet (0 credits)."
        return f"balance {wallet.balance_credits} · held {wallet.held_credits} · available {wallet.available_credits}"

    @admin.display(description="ledger row")
    def transaction_link(self, approval):
        return admin_link(approval.transaction, f"#{approval.transaction_id}") if approval.transaction_id else "—"

    def has_approve_permission(self, request) -> bool:
        return request.user.has_perm("billing.approve_credit_requests")

    def get_urls(self):
        return [
            path(
                "<int:request_id>/decide/",
                self.admin_site.admin_view(self.decide_view),
                name="billing_creditapprovalrequest_decide",
            ),
            *super().get_urls(),
        ]

    def change_view(self, request, object_id, form_url="", extra_context=None):
        approval = self.get_object(request, unquote(object_id))
        extra_context = {
            **(extra_context or {}),
            "can_decide": self.has_approve_permission(request),
            "own_request": approval is not None and request.user.pk in (approval.requested_by_id, approval.user_id),
            "decision_form": DecisionForm(),
        }
        return super().change_view(request, object_id, form_url, extra_context=extra_context)

    def decide_view(self, request, request_id: int):
        """Approve (`_approve`) or reject (`_reject`) one request, with an optional note (required to reject)."""
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        if not self.has_approve_permission(request):
            raise PermissionDenied
        approval = get_object_or_404(CreditApprovalRequest, pk=request_id)
        back = HttpResponseRedirect(reverse("admin:billing_creditapprovalrequest_change", args=[approval.pk]))
        form = DecisionForm(request.POST)
        approve, reject = "_approve" in request.POST, "_reject" in request.POST
        if not form.is_valid() or approve == reject:
            self.message_user(request, "Approve or reject, with a note of at most 500 characters.", messages.ERROR)
            return back
        note = form.cleaned_data["note"]
        try:
            if approve:
                approval = approvals.approve_request(request_id=approval.pk, approver_id=request.user.id, note=note)
            else:
                approval = approvals.reject_request(request_id=approval.pk, approver_id=request.user.id, note=note)
        except ledger.InsufficientCredits as exc:
            detail = (
                f"Not approved: only {exc.available} credits are available for this debit of {-approval.credits}. "
                "The request stays pending: reject it, or approve it once the credits are there."
            )
            self.log_change(request, approval, detail)
            self.message_user(request, detail, messages.ERROR)
        except (approvals.ApprovalError, ledger.LedgerError) as exc:
            self.message_user(request, exc.detail, messages.ERROR)
        else:
            if approval.status == ApprovalStatus.APPROVED:
                detail = (
                    f"Approved request #{approval.pk}: {approval.credits:+d} credits for {approval.user} "
                    f"(ledger row #{approval.transaction_id}, balance now {approval.transaction.balance_after})."
                )
            else:
                detail = f"Rejected request #{approval.pk}: nothing moved. Note: {approval.decision_note}"
            self.log_change(request, approval, detail)
            self.message_user(request, detail, messages.SUCCESS)
        return back


@admin.register(User)
class UserWithCreditsAdmin(UserAdmin):
    """The account admin plus the user's wallet, latest transactions and grant/debit buttons."""

    list_display = ["email", "is_staff", "is_active", "balance", "stripe_customer_id", "date_joined"]
    list_select_related = ["wallet"]
    readonly_fields = [*UserAdmin.readonly_fields, "wallet_summary", "recent_transactions"]
    fieldsets = (
        UserAdmin.fieldsets[0],
        ("Credits", {"fields": ("wallet_summary", "recent_transactions")}),
        *UserAdmin.fieldsets[1:],
    )
    change_form_template = "admin/users/user/change_form.html"

    def get_urls(self):
        return [
            path(
                "<int:user_id>/credits/<str:direction>/",
                self.admin_site.admin_view(user_credits_view),
                name="users_user_credits",
            ),
            *super().get_urls(),
        ]

    def change_view(self, request, object_id, form_url="", extra_context=None):
        extra_context = {**(extra_context or {}), "can_grant": request.user.has_perm("billing.grant_credits")}
        return super().change_view(request, object_id, form_url, extra_context=extra_context)

    @admin.display(description="balance")
    def balance(self, user):
        wallet = getattr(user, "wallet", None)
        return wallet.balance_credits if wallet else 0

    @admin.display(description="wallet")
    def wallet_summary(self, user):
        wallet = Wallet.objects.filter(user=user).first()
        if wallet is None:
            return "No wallet yet (0 credits)."
        return format_html(
            '<span id="wallet-balance">Balance <strong>{}</strong></span> · held {} · available {}{}',
            wallet.balance_credits,
            wallet.held_credits,
            wallet.available_credits,
            format_html(' · <strong style="color:#ba2121">shortfall {}</strong>', wallet.shortfall_credits)
            if wallet.shortfall_credits
            else "",
        )

    @admin.display(description=f"latest {RECENT_USER_TRANSACTIONS} transactions")
    def recent_transactions(self, user):
        rows = list(transactions_for_user(user_id=user.id).select_related("actor")[:RECENT_USER_TRANSACTIONS])
        if not rows:
            return "None yet."
        ledger_url = reverse("admin:billing_credittransaction_changelist") + "?" + urlencode({"q": user.email})
        body = format_html_join(
            "",
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            (
                (
                    row.created_at.strftime("%Y-%m-%d %H:%M"),
                    row.kind,
                    f"{row.amount:+d}",
                    row.balance_after,
                    row.reason or row.agent_id or "",
                    row.actor.email if row.actor else "",
                )
                for row in rows
            ),
        )
        return format_html(
            '<table id="recent-transactions"><thead><tr><th>when</th><th>kind</th><th>amount</th>'
            "<th>balance after</th><th>reason / agent</th><th>by</th></tr></thead><tbody>{}</tbody></table>"
            '<p><a href="{}">All transactions of this user</a></p>',
            body,
            ledger_url,
        )


@admin.register(WebhookEndpoint)
class WebhookEndpointAdmin(admin.ModelAdmin):
    """Where our signed event webhooks go; give the receiver the secret (it verifies with it)."""

    list_display = ["url", "description", "is_active", "event_types", "created_at"]
    readonly_fields = ["secret", "created_at"]
    fields = ["url", "description", "event_types", "is_active", "secret", "created_at"]

    def get_form(self, request, obj=None, **kwargs):
        form = super().get_form(request, obj, **kwargs)
        form.base_fields["event_types"].help_text = 'A JSON list, e.g. ["purchase.completed"]; [] for every event: ' + (
            ", ".join(events.EVENT_TYPES)
        )
        return form


class WebhookAttemptInline(admin.TabularInline):
    model = WebhookAttempt
    extra = 0
    can_delete = False
    fields = ["attempted_at", "status_code", "duration_ms", "error", "response_excerpt"]
    readonly_fields = fields

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(ReadOnlyAdmin):
    """The delivery log: every event for every endpoint, its attempts, and a resend button."""

    list_display = ["id", "event", "endpoint", "status", "attempts", "last_status_code", "next_attempt_at"]
    list_filter = ["status", "event__type"]
    list_select_related = ["event", "endpoint"]
    inlines = [WebhookAttemptInline]
    actions = ["resend"]

    @admin.action(description="Resend now", permissions=["resend"])
    def resend(self, request, queryset):
        for delivery_id in queryset.values_list("pk", flat=True):
            events.resend(delivery_id)
        self.message_user(request, f"{queryset.count()} delivery(ies) queued again.", messages.SUCCESS)

    def has_resend_permission(self, request):
        return request.user.has_perm("billing.change_webhookendpoint")


@admin.register(OutboxEvent)
class OutboxEventAdmin(ReadOnlyAdmin):
    list_display = ["event_id", "type", "user", "created_at"]
    list_filter = ["type"]
    search_fields = ["event_id", "user__email"]


@admin.register(AutoRecharge)
class AutoRechargeAdmin(ReadOnlyAdmin):
    """Users' auto-recharge settings (they change them through the API)."""

    list_display = ["user", "enabled", "threshold_credits", "package_id", "monthly_limit_cents", "failures_in_row"]
    list_filter = ["enabled"]
    search_fields = ["user__email"]


@admin.register(RechargeAttempt)
class RechargeAttemptAdmin(ReadOnlyAdmin):
    """One row per threshold crossing: what was asked of the card, what Stripe charged, what was credited."""

    list_display = [
        "id",
        "user",
        "status",
        "package_id",
        "amount_cents",
        "charged_cents",
        "credited_credits",
        "failure_code",
        "created_at",
    ]
    list_filter = ["status"]
    search_fields = ["user__email", "stripe_payment_intent_id"]


@admin.register(SavedPaymentMethod)
class SavedPaymentMethodAdmin(ReadOnlyAdmin):
    list_display = ["user", "brand", "last4", "stripe_payment_method_id", "saved_at"]
    search_fields = ["user__email", "stripe_payment_method_id"]
