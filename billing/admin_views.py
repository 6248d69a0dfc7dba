"""Finance pages inside the Django admin: reports, and granting/debiting a user's credits."""

from __future__ import annotations

import uuid
from datetime import timedelta

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html
from django.utils.safestring import mark_safe

from billing import ledger, reports, revenue
from billing.approvals import change_credits
from billing.charts import bar_chart_svg
from billing.exports import SafeWriter
from billing.models import CreditApprovalRequest, LotCategory
from billing.selectors import wallet_for_user
from core.db_routing import reads_from_replica
from users.models import User

MAX_REPORT_DAYS = 366


class PeriodForm(forms.Form):
    start = forms.DateField(required=False, widget=forms.DateInput(attrs={"type": "date"}))
    end = forms.DateField(required=False, widget=forms.DateInput(attrs={"type": "date"}))

    def clean(self):
        data = super().clean()
        default = _default_period()
        end = data.get("end") or default.end
        start = data.get("start") or end - (default.end - default.start)
        if start > end:
            raise forms.ValidationError("The start must not be after the end.")
        if (end - start).days >= MAX_REPORT_DAYS:
            raise forms.ValidationError(f"Choose at most {MAX_REPORT_DAYS} days.")
        data["period"] = reports.Period(start=start, end=end)
        return data


def _default_period() -> reports.Period:
    end = timezone.now().date()
    return reports.Period(start=end - timedelta(days=29), end=end)


def _csv_response(rows: list[dict], filename: str) -> HttpResponse:
    response = HttpResponse(content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    writer = SafeWriter(response)
    if rows:
        writer.writerow(rows[0].keys())
        writer.writerows(row.values() for row in rows)
    return response


def reports_view(request):
    """Finance reports for a date range; `?download=<table>` returns that table as CSV."""
    if not request.user.has_perm("billing.view_finance_reports"):
        raise PermissionDenied
    form = PeriodForm(request.GET or None)
    period = form.cleaned_data["period"] if form.is_bound and form.is_valid() else _default_period()
    with reads_from_replica():  # reports decide nothing: the read replica may serve them
        tables = {
            "credits_by_day": reports.credits_by_day(period=period),
            "revenue_by_package": reports.revenue_by_package(period=period),
            "usage_by_agent": reports.usage_by_agent(period=period),
            "webhook_events": [reports.webhook_stats(period=period)],
            "failed_payments": reports.failed_payments(period=period),
            "credits_held_now": [reports.credits_held_now()],
            "top_users": reports.top_users(period=period),
        }
    download = request.GET.get("download")
    if download:
        if download not in tables:
            raise Http404("No such report table.")
        return _csv_response(tables[download], f"{download}_{period.start}_{period.end}.csv")
    by_day = tables["credits_by_day"]
    chart = bar_chart_svg(
        chart_id="credits-chart",
        title=f"Credits purchased vs consumed per day ({period.start} – {period.end})",
        labels=[row["day"] for row in by_day],
        series=[
            ("purchased", [row["purchased"] for row in by_day], "#417690"),
            ("granted", [row["granted"] for row in by_day], "#79aec8"),
            ("consumed", [row["consumed"] for row in by_day], "#ba2121"),
        ],
    )
    query = f"start={period.start}&end={period.end}"
    context = {
        **admin.site.each_context(request),
        "title": "Finance reports",
        "form": form,
        "period": period,
        "chart": mark_safe(chart),  # built from escaped parts in billing.charts
        "tables": tables,
        "webhooks": tables["webhook_events"][0],
        "held": tables["credits_held_now"][0],
        "query": query,
    }
    return TemplateResponse(request, "admin/finance_reports.html", context)


def _money(cents: int) -> str:
    return f"{'-' if cents < 0 else ''}{abs(cents) // 100:,}.{abs(cents) % 100:02d}"


def revenue_view(request):
    """Revenue from the lots (`billing.revenue`) for a date range, by day and month, with a
    chart; `?download=<table>` returns that table as CSV (cents, exact)."""
    if not request.user.has_perm("billing.view_finance_reports"):
        raise PermissionDenied
    form = PeriodForm(request.GET or None)
    period = form.cleaned_data["period"] if form.is_bound and form.is_valid() else _default_period()
    with reads_from_replica():
        by_day = revenue.revenue_by_day(period=period)
        tables = {
            "revenue_by_day": by_day,
            "revenue_by_month": revenue.by_month(by_day),
            "promotional_by_day": revenue.promotional_by_day(period=period),
            "deferred_now": revenue.deferred_now(),
        }
    download = request.GET.get("download")
    if download:
        if download not in tables:
            raise Http404("No such revenue table.")
        return _csv_response(tables[download], f"{download}_{period.start}_{period.end}.csv")
    currency = by_day[0]["currency"] if by_day else "usd"
    shown = [row for row in by_day if row["currency"] == currency]
    chart = bar_chart_svg(
        chart_id="revenue-chart",
        title=f"Revenue per day in {currency.upper()} cents ({period.start} – {period.end})",
        labels=[row["day"] for row in shown],
        series=[
            ("recognised", [row["recognised"] for row in shown], "#417690"),
            ("breakage", [row["breakage"] for row in shown], "#79aec8"),
            ("refunded", [row["refunded"] for row in shown], "#ba2121"),
        ],
    )
    money_columns = (*revenue.REVENUE_COLUMNS, "paid_in", "deferred_end")
    context = {
        **admin.site.each_context(request),
        "title": "Revenue",
        "form": form,
        "period": period,
        "chart": mark_safe(chart),  # built from escaped parts in billing.charts
        "days": [{**row, **{c: _money(row[c]) for c in money_columns}} for row in by_day],
        "months": [{**row, **{c: _money(row[c]) for c in money_columns}} for row in tables["revenue_by_month"]],
        "promotional": tables["promotional_by_day"],
        "deferred": [{**row, "deferred": _money(row["deferred_cents"])} for row in tables["deferred_now"]],
        "query": f"start={period.start}&end={period.end}",
    }
    return TemplateResponse(request, "admin/finance_revenue.html", context)


class CreditsForm(forms.Form):
    """A grant or a debit; a grant also takes its lot's terms (category, expiry)."""

    credits = forms.IntegerField(min_value=1, help_text="Whole credits.")
    reason = forms.CharField(max_length=500, widget=forms.Textarea(attrs={"rows": 3, "cols": 60}))
    category = forms.ChoiceField(
        choices=LotCategory.choices,
        initial=LotCategory.PROMOTIONAL,
        required=False,
        help_text="Promotional credits are spent before paid ones that expire at the same time.",
    )
    expires_at = forms.DateTimeField(
        required=False,
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}, format="%Y-%m-%dT%H:%M"),
        help_text="Empty: the credits never expire. Otherwise a moment in the future (UTC).",
    )
    # Generated when the form is shown: submitting the same form twice moves credits once.
    idempotency_key = forms.CharField(widget=forms.HiddenInput, max_length=64)

    def __init__(self, *args, direction: str = "grant", **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["credits"] = forms.IntegerField(
            min_value=1, max_value=settings.BILLING_MAX_GRANT, help_text="Whole credits."
        )
        if direction != "grant":  # a debit takes credits in burn order and opens no lot
            del self.fields["category"], self.fields["expires_at"]

    def clean_category(self) -> str:
        return self.cleaned_data.get("category") or LotCategory.PROMOTIONAL

    def clean_expires_at(self):
        expires_at = self.cleaned_data.get("expires_at")
        if expires_at is not None and expires_at <= timezone.now():
            raise forms.ValidationError("The expiry must be in the future.")
        return expires_at


def _awaiting_approval_message(approval: CreditApprovalRequest) -> str:
    url = reverse("admin:billing_creditapprovalrequest_change", args=[approval.pk])
    return format_html(
        'Above the approval threshold of {} credits: <a href="{}">request #{}</a> ({} credits) awaits '
        "approval by another Finance user. Nothing has moved yet.",
        settings.FINANCE_APPROVAL_THRESHOLD,
        url,
        approval.pk,
        f"{approval.credits:+d}",
    )


def user_credits_view(request, user_id: int, direction: str):
    """Grant or debit a user's credits through the ledger, the staff user recorded as actor;
    above FINANCE_APPROVAL_THRESHOLD a request for another Finance user to approve instead."""
    if not (request.user.is_staff and request.user.has_perm("billing.grant_credits")):
        raise PermissionDenied
    if direction not in ("grant", "debit"):
        raise Http404
    target = get_object_or_404(User, pk=user_id)
    wallet = wallet_for_user(user_id=target.id)
    back = reverse("admin:users_user_change", args=[target.id])
    if request.method == "POST":
        form = CreditsForm(request.POST, direction=direction)
        if form.is_valid():
            amount = form.cleaned_data["credits"]
            lot_terms = {name: form.cleaned_data[name] for name in ("category", "expires_at") if name in form.fields}
            try:
                change = change_credits(
                    user_id=target.id,
                    amount=amount if direction == "grant" else -amount,
                    reason=form.cleaned_data["reason"],
                    actor_id=request.user.id,
                    idempotency_key=f"admin-{form.cleaned_data['idempotency_key']}",
                    **lot_terms,
                )
            except ledger.InsufficientCredits as exc:
                form.add_error("credits", f"Only {exc.available} credits are available to debit.")
            except ledger.LedgerError as exc:
                form.add_error(None, exc.detail)
            else:
                if change.approval is not None:
                    messages.warning(request, _awaiting_approval_message(change.approval))
                else:
                    verb = "Granted" if direction == "grant" else "Debited"
                    messages.success(request, f"{verb} {amount} credits. New balance: {change.executed.balance_after}.")
                return HttpResponseRedirect(back)
    else:
        form = CreditsForm(initial={"idempotency_key": uuid.uuid4().hex}, direction=direction)
    context = {
        **admin.site.each_context(request),
        "title": f"{'Grant' if direction == 'grant' else 'Debit'} credits — {target.email}",
        "form": form,
        "target": target,
        "wallet": wallet,
        "direction": direction,
        "approval_threshold": settings.FINANCE_APPROVAL_THRESHOLD,
        "back": back,
        "opts": User._meta,
    }
    return TemplateResponse(request, "admin/users/user/credits_form.html", context)
