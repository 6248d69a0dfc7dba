from django.contrib.auth.admin import UserAdmin as BaseUserAdmin


class UserAdmin(BaseUserAdmin):
    """Accounts by e-mail. Registered by `billing.admin` with the user's wallet and credit actions
    added (users is below billing: it never imports it)."""

    ordering = ["email"]
    list_display = ["email", "is_staff", "is_active", "stripe_customer_id", "date_joined"]
    search_fields = ["email", "stripe_customer_id"]
    readonly_fields = ["stripe_customer_id", "last_login", "date_joined"]
    fieldsets = (
        (None, {"fields": ("email", "password")}),
        ("Billing", {"fields": ("stripe_customer_id",)}),
        ("Permissions", {"fields": ("is_active", "is_staff", "is_superuser", "groups", "user_permissions")}),
        ("Dates", {"fields": ("last_login", "date_joined")}),
    )
    add_fieldsets = ((None, {"classes": ("wide",), "fields": ("email", "password1", "password2")}),)
