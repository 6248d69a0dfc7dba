from django.core.management.base import BaseCommand, CommandError

from billing.models import StripeWebhookEvent, WebhookEventStatus
from billing.stripe_webhooks import process_event


class Command(BaseCommand):
    help = (
        "Re-run stored Stripe webhook events. Safe to repeat: events already processed or ignored are "
        "skipped, and grants/claw-backs are idempotent."
    )

    def add_arguments(self, parser):
        parser.add_argument("--failed", action="store_true", help="All events whose processing failed.")
        parser.add_argument(
            "--id",
            dest="event_ids",
            action="append",
            default=[],
            metavar="evt_…",
            help="A Stripe event id (repeatable).",
        )

    def handle(self, *args, failed: bool, event_ids: list[str], **options):
        if not failed and not event_ids:
            raise CommandError("Say which events: --failed and/or --id evt_…")
        events = StripeWebhookEvent.objects.none()
        if failed:
            events |= StripeWebhookEvent.objects.filter(status=WebhookEventStatus.FAILED)
        if event_ids:
            events |= StripeWebhookEvent.objects.filter(stripe_event_id__in=event_ids)
            missing = set(event_ids) - set(
                StripeWebhookEvent.objects.filter(stripe_event_id__in=event_ids).values_list(
                    "stripe_event_id", flat=True
                )
            )
            if missing:
                raise CommandError(f"No stored event(s): {', '.join(sorted(missing))}")
        pks = list(events.order_by("received_at", "id").values_list("pk", flat=True))
        counts: dict[str, int] = {}
        for index, pk in enumerate(pks, start=1):
            try:
                outcome = process_event(event_pk=pk)
                label = "duplicate" if outcome.duplicate else outcome.status
                detail = StripeWebhookEvent.objects.filter(pk=pk).values_list("error", flat=True).first() or ""
                self.stdout.write(f"[{index}/{len(pks)}] {outcome.stripe_event_id}: {label} {detail}".rstrip())
            except Exception as exc:
                label = "error"
                self.stdout.write(self.style.ERROR(f"[{index}/{len(pks)}] event {pk}: {exc}"))
            counts[label] = counts.get(label, 0) + 1
        summary = ", ".join(f"{n} {label}" for label, n in sorted(counts.items())) or "nothing to do"
        self.stdout.write(self.style.SUCCESS(f"Reprocessed {len(pks)} event(s): {summary}"))
        if counts.get("error") or counts.get(WebhookEventStatus.FAILED):
            raise CommandError("Some events still fail; see above.")
