from django.contrib import admin
from django.contrib.auth.admin import UserAdmin as BaseUserAdmin
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join
from django.utils.http import urlencode

from billing.admin_views import user_credits_view
from billing.models import Wallet
from billing.selectors import transactions_for_user
from users.models import User

RECENT = 10


@admin.register(User)
class UserAdmin(BaseUserAdmin):
    ordering = ["email"]
    list_display = ["email", "is_staff", "is_active", "balance", "stripe_customer_id", "date_joined"]
    list_select_related = ["wallet"]
    search_fields = ["email", "stripe_customer_id"]
    readonly_fields = ["stripe_customer_id", "last_login", "date_joined", "wallet_summary", "recent_transactions"]
    fieldsets = (
        (None, {"fields": ("email", "password")}),
        ("Credits", {"fields": ("wallet_summary", "recent_transactions")}),
        ("Billing", {"fields": ("stripe_customer_id",)}),
        ("Permissions", {"fields": ("is_active", "is_staff", "is_superuser", "groups", "user_permissions")}),
        ("Dates", {"fields": ("last_login", "date_joined")}),
    )
    add_fieldsets = ((None, {"classes": ("wide",), "fields": ("email", "password1", "password2")}),)
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

    @admin.display(description=f"latest {RECENT} transactions")
    def recent_transactions(self, user):
        rows = list(transactions_for_user(user_id=user.id).select_related("actor")[:RECENT])
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
