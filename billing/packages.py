"""Credit packages, read from `billing/credit_packages.json` and validated at start-up.

A malformed file stops the service with a message naming the problem, rather than
selling a package with a wrong price later.
"""

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

_PACKAGE_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
_CURRENCY = re.compile(r"^[a-z]{3}$")
_FIELDS = {"package_id", "name", "credits", "price_cents", "currency", "stripe_price_id"}
_OPTIONAL = {"expires_in_days"}


@dataclass(frozen=True)
class CreditPackage:
    package_id: str
    name: str
    credits: int
    price_cents: int
    currency: str
    stripe_price_id: str | None
    expires_in_days: int | None = None  # the credits expire this long after payment; None: never


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def parse_packages(raw: str, *, source: str = "credit_packages.json") -> tuple[CreditPackage, ...]:
    """Parse and validate the packages file; raises ImproperlyConfigured naming the problem."""
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ImproperlyConfigured(f"{source}: not valid JSON ({exc})") from exc
    if not isinstance(data, list) or not data:
        raise ImproperlyConfigured(f"{source}: expected a non-empty JSON list of packages")
    packages, seen = [], set()
    for index, item in enumerate(data):
        where = f"{source}: package #{index}"
        if not isinstance(item, dict):
            raise ImproperlyConfigured(f"{where}: expected an object")
        missing, unknown = _FIELDS - item.keys(), item.keys() - _FIELDS - _OPTIONAL
        if missing:
            raise ImproperlyConfigured(f"{where}: missing field(s) {', '.join(sorted(missing))}")
        if unknown:
            raise ImproperlyConfigured(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
        pid = item["package_id"]
        if not isinstance(pid, str) or not _PACKAGE_ID.match(pid):
            raise ImproperlyConfigured(f"{where}: package_id must be a lowercase slug, got {pid!r}")
        where = f"{source}: package {pid!r}"
        if pid in seen:
            raise ImproperlyConfigured(f"{where}: duplicate package_id")
        seen.add(pid)
        if not isinstance(item["name"], str) or not item["name"].strip():
            raise ImproperlyConfigured(f"{where}: name must be a non-empty string")
        if not _is_int(item["credits"]) or item["credits"] <= 0:
            raise ImproperlyConfigured(f"{where}: credits must be a positive integer")
        if not _is_int(item["price_cents"]) or item["price_cents"] <= 0:
            raise ImproperlyConfigured(f"{where}: price_cents must be a positive integer")
        if not isinstance(item["currency"], str) or not _CURRENCY.match(item["currency"]):
            raise ImproperlyConfigured(f"{where}: currency must be a lowercase ISO code such as 'usd'")
        price_id = item["stripe_price_id"]
        if price_id is not None and (not isinstance(price_id, str) or not price_id.startswith("price_")):
            raise ImproperlyConfigured(f"{where}: stripe_price_id must be null or a Stripe price id ('price_…')")
        days = item.get("expires_in_days")
        if days is not None and (not _is_int(days) or not 1 <= days <= 36500):
            raise ImproperlyConfigured(f"{where}: expires_in_days must be null or a whole number of days (1–36500)")
        packages.append(CreditPackage(**item))
    return tuple(packages)


def load_packages(path: Path) -> tuple[CreditPackage, ...]:
    try:
        raw = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ImproperlyConfigured(f"{path}: cannot read the packages file ({exc.strerror})") from exc
    return parse_packages(raw, source=str(path.name))


@lru_cache(maxsize=1)
def all_packages() -> tuple[CreditPackage, ...]:
    return load_packages(settings.BILLING_PACKAGES_FILE)


def get_package(package_id: str) -> CreditPackage | None:
    return next((p for p in all_packages() if p.package_id == package_id), None)
