"""Finance staff's console. Ledger rows and balances are never editable here."""

from django.contrib import admin

from billing.models import CreditHold, CreditShortfall, CreditTransaction, Purchase, StripeWebhookEvent, Wallet


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
    list_display = ["user", "balance_credits", "held_credits", "available_credits", "shortfall_credits", "updated_at"]
    search_fields = ["user__email"]
    list_select_related = ["user"]


@admin.register(CreditTransaction)
class CreditTransactionAdmin(ReadOnlyAdmin):
    list_display = ["id", "created_at", "wallet", "kind", "amount", "balance_after", "agent_id", "reason"]
    list_filter = ["kind", "agent_id", "created_at"]
    search_fields = ["wallet__user__email", "stripe_payment_intent_id", "stripe_checkout_session_id"]
    list_select_related = ["wallet__user"]
    date_hierarchy = "created_at"


@admin.register(CreditHold)
class CreditHoldAdmin(ReadOnlyAdmin):
    list_display = ["id", "wallet", "amount", "status", "agent_id", "expires_at", "created_at"]
    list_filter = ["status", "agent_id"]
    list_select_related = ["wallet__user"]


@admin.register(StripeWebhookEvent)
class StripeWebhookEventAdmin(ReadOnlyAdmin):
    list_display = ["stripe_event_id", "type", "status", "attempts", "received_at", "processed_at"]
    list_filter = ["status", "type"]
    search_fields = ["stripe_event_id"]


@admin.register(Purchase)
class PurchaseAdmin(ReadOnlyAdmin):
    list_display = [
        "stripe_checkout_session_id",
        "user",
        "package_id",
        "credits",
        "amount_cents",
        "currency",
        "status",
        "clawed_back_credits",
        "created_at",
        "paid_at",
    ]
    list_filter = ["status", "package_id", "created_by_checkout"]
    search_fields = ["user__email", "stripe_checkout_session_id", "stripe_payment_intent_id"]
    list_select_related = ["user"]


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
    list_select_related = ["wallet__user"]
