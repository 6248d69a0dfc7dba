from django.core.management.base import BaseCommand, CommandError

from billing.reconcile import BATCH, reconcile


class Command(BaseCommand):
    help = (
        "Check the ledger: balance = Σ amounts and held = Σ pending holds per wallet, balance_after chains, "
        "one purchase row per paid checkout, every refund/dispute clawed back. Read-only; exits non-zero on drift."
    )

    def add_arguments(self, parser):
        parser.add_argument("--batch-size", type=int, default=BATCH, help="Wallets per batch (default 1000).")

    def handle(self, *args, batch_size: int, **options):
        def progress(done: int, total: int) -> None:
            self.stderr.write(f"  wallets checked: {done}/{total}")

        drift = reconcile(batch=batch_size, progress=progress if options["verbosity"] >= 1 else None)
        for item in drift:
            self.stdout.write(self.style.ERROR(str(item)))
        if drift:
            raise CommandError(f"Ledger drift: {len(drift)} problem(s) found.")
        self.stdout.write(self.style.SUCCESS("Ledger reconciled: no drift."))
