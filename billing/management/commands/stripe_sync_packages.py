import json

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from billing import stripe_client
from billing.packages import all_packages, load_packages


class Command(BaseCommand):
    help = (
        "Create or update the Stripe Product and Price of every credit package and write the price ids "
        "back to the packages file. Prices are immutable in Stripe: a changed amount gets a new Price "
        "and the old one is archived."
    )

    def add_arguments(self, parser):
        parser.add_argument("--dry-run", action="store_true", help="Show what would change; change nothing.")

    def handle(self, *args, dry_run: bool, **options):
        if settings.STRIPE_API_KEY.startswith("sk_live_"):
            self.stdout.write(self.style.WARNING("Using a LIVE Stripe key."))
        path = settings.BILLING_PACKAGES_FILE
        packages = load_packages(path)
        new_price_ids: dict[str, str] = {}
        changes = 0
        for package in packages:
            product = stripe_client.retrieve_product(stripe_client.product_id_for(package))
            if product is None or product.name != package.name:
                changes += 1
                action = "create product" if product is None else "rename product"
                self.stdout.write(f"{package.package_id}: {action} {stripe_client.product_id_for(package)}")
                if not dry_run:
                    stripe_client.upsert_product(package, existing=product)
            price = stripe_client.retrieve_price(package.stripe_price_id) if package.stripe_price_id else None
            current = price is not None and (
                price.active
                and price.unit_amount == package.price_cents
                and price.currency == package.currency
                and price.product == stripe_client.product_id_for(package)
            )
            if current:
                self.stdout.write(f"{package.package_id}: price {price.id} is up to date")
                continue
            changes += 1
            self.stdout.write(
                f"{package.package_id}: create price {package.price_cents} {package.currency}"
                + (f" (archive {price.id})" if price is not None and price.active else "")
            )
            if not dry_run:
                created = stripe_client.create_price(package)
                if price is not None and price.active:
                    stripe_client.archive_price(price.id)
                new_price_ids[package.package_id] = created.id
        if dry_run:
            self.stdout.write(self.style.WARNING(f"Dry run: {changes} change(s) not applied."))
            return
        if new_price_ids:
            self._write_back(path, new_price_ids)
        self.stdout.write(self.style.SUCCESS(f"{changes} change(s) applied; {len(new_price_ids)} price id(s) written."))

    def _write_back(self, path, new_price_ids: dict[str, str]) -> None:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise CommandError(f"Cannot re-read {path}: {exc}") from exc
        for item in data:
            if item["package_id"] in new_price_ids:
                item["stripe_price_id"] = new_price_ids[item["package_id"]]
        path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        all_packages.cache_clear()
        self.stdout.write(f"Wrote {len(new_price_ids)} price id(s) to {path}")
