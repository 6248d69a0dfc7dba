"""The admin site staff log in to: two-factor (TOTP) aware, rate-limited per address, and
locked per account by django-axes after repeated failures.

- A staff member with a confirmed TOTP device must give its current code with the password.
- Members of `ADMIN_2FA_REQUIRED_GROUPS` (the Finance groups when FINANCE_REQUIRE_2FA=true)
  cannot log in without a device, and a session not verified by one has no admin access.
"""

import time

from django import forms
from django.conf import settings
from django.contrib import admin
from django.contrib.admin.forms import AdminAuthenticationForm
from django.core.cache import cache
from django.http import HttpResponse
from django_otp import user_has_device
from django_otp.admin import _admin_template_for_django_version
from django_otp.forms import OTPAuthenticationFormMixin
from rest_framework.throttling import SimpleRateThrottle

from core.addresses import client_address


def _login_rate_allows(request) -> bool:
    """At most ADMIN_LOGIN_RATE log-in posts per client address (a fixed window in the cache)."""
    count, period = SimpleRateThrottle.parse_rate(None, settings.ADMIN_LOGIN_RATE)
    key = f"admin-login:{client_address(request)}:{int(time.time() // period)}"
    cache.add(key, 0, timeout=period)
    try:
        attempts = cache.incr(key)
    except ValueError:  # expired between add and incr
        attempts = 1
    return attempts <= count


def requires_two_factor(user) -> bool:
    groups = settings.ADMIN_2FA_REQUIRED_GROUPS
    return bool(groups) and user.is_authenticated and user.groups.filter(name__in=groups).exists()


class TwoFactorAdminAuthenticationForm(OTPAuthenticationFormMixin, AdminAuthenticationForm):
    otp_device = forms.CharField(required=False, widget=forms.Select)
    otp_token = forms.CharField(
        required=False, label="Authenticator code", widget=forms.TextInput(attrs={"autocomplete": "one-time-code"})
    )
    otp_challenge = forms.CharField(required=False)

    def clean(self):
        cleaned = super().clean()
        user = self.get_user()
        if user is None:
            return cleaned
        if user_has_device(user):
            self.clean_otp(user)
        elif requires_two_factor(user):
            raise forms.ValidationError(
                "Finance staff need two-factor authentication: ask an administrator to register your "
                "authenticator app (Admin → TOTP devices), then log in with its code.",
                code="two_factor_required",
            )
        return cleaned


class StaffAdminSite(admin.AdminSite):
    login_form = TwoFactorAdminAuthenticationForm
    login_template = _admin_template_for_django_version()

    def login(self, request, extra_context=None):
        if request.method == "POST" and not _login_rate_allows(request):
            return HttpResponse(
                "Too many log-in attempts from your address; wait a minute.", status=429, content_type="text/plain"
            )
        return super().login(request, extra_context)

    def has_permission(self, request) -> bool:
        if not super().has_permission(request):
            return False
        user = request.user
        return not requires_two_factor(user) or user.is_verified()
