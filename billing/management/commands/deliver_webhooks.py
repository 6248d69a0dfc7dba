from django.core.management.base import BaseCommand

from billing.events import deliver_due


class Command(BaseCommand):
    help = "Attempt every due event-webhook delivery now (Celery beat does it every DELIVER_WEBHOOKS_EVERY_SECONDS)."

    def add_arguments(self, parser):
        parser.add_argument("--limit", type=int, default=500, help="Deliveries per run (default 500).")

    def handle(self, *args, limit: int, **options):
        delivered = deliver_due(limit=limit)
        self.stdout.write(self.style.SUCCESS(f"Delivered {delivered} event webhook(s)."))
