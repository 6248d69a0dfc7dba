from django.core.management.base import BaseCommand

from billing.holds import expire_due_holds


class Command(BaseCommand):
    help = "Release pending holds past their expiry (BILLING_HOLD_TTL), e.g. those left by a crashed worker."

    def add_arguments(self, parser):
        parser.add_argument("--batch-size", type=int, default=500, help="Holds per pass (default 500).")

    def handle(self, *args, batch_size: int, **options):
        total = 0
        while True:
            expired = expire_due_holds(
                batch_size=batch_size, progress=lambda i, n: self.stdout.write(f"  {i}/{n}", ending="\r")
            )
            total += expired
            if expired < batch_size:
                break
        self.stdout.write(self.style.SUCCESS(f"Expired {total} hold(s)."))
