from django.core.management.base import BaseCommand

from billing.expiry import expire_due_credits


class Command(BaseCommand):
    help = "Expire the credits of lots past their expiry (not those pinned by a pending hold): one expiry row each."

    def add_arguments(self, parser):
        parser.add_argument("--batch-size", type=int, default=500, help="Lots per pass (default 500).")

    def handle(self, *args, batch_size: int, **options):
        total = 0
        while True:
            expired = expire_due_credits(
                batch_size=batch_size, progress=lambda i, n: self.stdout.write(f"  {i}/{n}", ending="\r")
            )
            total += expired
            if expired < batch_size:
                break
        self.stdout.write(self.style.SUCCESS(f"Expired the credits of {total} lot(s)."))
