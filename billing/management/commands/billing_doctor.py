"""`python manage.py billing_doctor`: the runbook's troubleshooting list, checked and said plainly.

Each check prints `ok` or what is wrong and what to do; the command exits non-zero when
anything is wrong. Read-only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import timedelta

from django.apps import apps
from django.conf import settings
from django.core.checks import run_checks
from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError
from django.db import DatabaseError, connection
from django.db.migrations.executor import MigrationExecutor
from django.utils import timezone

from billing.models import CreditHold, HoldStatus, Purchase, PurchaseStatus, StripeWebhookEvent, WebhookEventStatus
from billing.packages import all_packages
from billing.reconcile import reconcile

RECENT = timedelta(days=7)
SHOWN = 5  # problems listed per check; the rest are counted


def _database() -> Iterator[str]:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        executor = MigrationExecutor(connection)
        plan = executor.migration_plan(executor.loader.graph.leaf_nodes())
    except DatabaseError as exc:
        yield f"The database does not answer ({exc}). Check DATABASE_URL and that the server runs."
        return
    if plan:
        yield f"{len(plan)} migration(s) not applied (first: {plan[0][0]}). Run `python manage.py migrate`."


def _agent_costs() -> Iterator[str]:
    active = apps.get_model("agents", "AgentCost").objects.filter(is_active=True).count()
    if active == 0:
        yield "No active agent costs: every agent run is refused. Run `python manage.py seed_agent_costs`."


def _packages() -> Iterator[str]:
    try:
        packages = all_packages()
    except ImproperlyConfigured as exc:
        yield f"The credit packages file is invalid: {exc}"
        return
    if not packages:
        yield "No credit packages: nothing can be bought."
    if settings.STRIPE_LIVE_MODE:
        for package in packages:
            if not package.stripe_price_id:
                yield f"Package {package.package_id} has no Stripe price id in live mode. Run `stripe_sync_packages`."


def _secrets() -> Iterator[str]:
    for problem in run_checks(tags=["secrets"]):
        yield f"{problem.msg} {problem.hint or ''}".strip()
    if not settings.STRIPE_API_KEY:
        yield "STRIPE_API_KEY is not set: checkout cannot start."
    if not settings.STRIPE_WEBHOOK_SECRET:
        yield "STRIPE_WEBHOOK_SECRET is not set: every webhook is refused, no purchase is credited."


def _webhook_events() -> Iterator[str]:
    since = timezone.now() - RECENT
    troubled = StripeWebhookEvent.objects.filter(
        received_at__gte=since, status__in=[WebhookEventStatus.FAILED, WebhookEventStatus.RECEIVED]
    ).order_by("-received_at")
    for event in troubled[:SHOWN]:
        reason = event.error or "never processed"
        yield f"Webhook event {event.stripe_event_id} ({event.type}) is {event.status}: {reason}"
    if (count := troubled.count()) > SHOWN:
        yield f"… and {count - SHOWN} more failed webhook events in the last 7 days."
    if troubled.exists():
        yield "Fix the cause, then `python manage.py reprocess_webhook_events --failed`."


def _purchases_without_grant() -> Iterator[str]:
    granted = set(
        Purchase.objects.filter(status=PurchaseStatus.PAID, transaction__isnull=False).values_list(
            "stripe_checkout_session_id", flat=True
        )
    )
    paid_sessions = StripeWebhookEvent.objects.filter(
        type__in=["checkout.session.completed", "checkout.session.async_payment_succeeded"],
        payload__data__object__payment_status="paid",
    ).values_list("payload__data__object__id", "stripe_event_id")
    missing = [(session, event) for session, event in paid_sessions if session not in granted]
    for session, event in missing[:SHOWN]:
        yield f"Checkout session {session} was paid (event {event}) but no credits were granted."
    if len(missing) > SHOWN:
        yield f"… and {len(missing) - SHOWN} more paid sessions without a grant."


def _stale_holds() -> Iterator[str]:
    cutoff = timezone.now() - timedelta(seconds=settings.EXPIRE_HOLDS_EVERY_SECONDS)
    stale = CreditHold.objects.filter(status=HoldStatus.PENDING, expires_at__lt=cutoff).count()
    if stale:
        yield (
            f"{stale} hold(s) pending past their expiry: is Celery beat running? "
            "`python manage.py expire_holds` releases them now."
        )


def _ledger() -> Iterator[str]:
    drift = reconcile()
    for item in drift[:SHOWN]:
        yield f"Ledger drift: {item}"
    if len(drift) > SHOWN:
        yield f"… and {len(drift) - SHOWN} more; `python manage.py reconcile_ledger` lists all."


CHECKS: list[tuple[str, Callable[[], Iterator[str]]]] = [
    ("database reachable and migrated", _database),
    ("agent costs seeded", _agent_costs),
    ("credit packages", _packages),
    ("secrets", _secrets),
    ("webhook events (last 7 days)", _webhook_events),
    ("paid purchases granted", _purchases_without_grant),
    ("holds expire", _stale_holds),
    ("ledger reconciles", _ledger),
]


class Command(BaseCommand):
    help = "Walk the runbook's troubleshooting list; say what is wrong in plain words. Exits non-zero on any problem."

    def handle(self, *args, **options):
        problems = 0
        database_ok = True
        for title, check in CHECKS:
            if not database_ok and check is not _secrets:
                self.stdout.write(f"-- {title}: skipped (no database)")
                continue
            found = list(check())
            if check is _database and found:
                database_ok = False
            if not found:
                self.stdout.write(self.style.SUCCESS(f"ok {title}"))
                continue
            problems += len(found)
            self.stdout.write(self.style.ERROR(f"!! {title}"))
            for line in found:
                self.stdout.write(f"   {line}")
        if problems:
            raise CommandError(f"billing_doctor found {problems} problem(s).")
        self.stdout.write(self.style.SUCCESS("Everything the runbook checks is in order."))
