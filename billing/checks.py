"""Start-up checks for secrets pasted badly: refuse to run rather than fail every webhook later.

Registered as Django system checks (tag `secrets`), so `manage.py check`, `migrate` and
`runserver` refuse to start; `config/wsgi.py` runs them too, so gunicorn refuses as well.
"""

from __future__ import annotations

from django.conf import settings
from django.core.checks import Error, Tags, Warning, register

SECRET_SETTINGS = ("SECRET_KEY", "STRIPE_API_KEY", "STRIPE_WEBHOOK_SECRET", "METRICS_TOKEN")
API_KEY_PREFIXES = ("sk_test_", "sk_live_", "rk_test_", "rk_live_")


@register("secrets", Tags.security, deploy=False)
def check_secrets(app_configs=None, **kwargs) -> list:
    problems = []
    for name in SECRET_SETTINGS:
        value = getattr(settings, name, "") or ""
        if value != value.strip() or any(ch.isspace() for ch in value):
            problems.append(
                Error(
                    f"{name} contains whitespace (a space, tab or line break pasted with it).",
                    hint=f"Copy {name} again without surrounding spaces or quotes; .env values take no quotes.",
                    id="billing.E001",
                )
            )
    api_key, webhook_secret = settings.STRIPE_API_KEY.strip(), settings.STRIPE_WEBHOOK_SECRET.strip()
    if webhook_secret and not webhook_secret.startswith("whsec_"):
        problems.append(
            Error(
                "STRIPE_WEBHOOK_SECRET does not start with whsec_: it is not a webhook signing secret.",
                hint="Dashboard → Developers → Webhooks → your endpoint → Signing secret (or `stripe listen`).",
                id="billing.E002",
            )
        )
    if api_key and not api_key.startswith(API_KEY_PREFIXES):
        problems.append(
            Error(
                "STRIPE_API_KEY is not a secret or restricted key (sk_test_, sk_live_, rk_test_, rk_live_).",
                hint="A publishable key (pk_…) or a webhook secret was pasted into STRIPE_API_KEY.",
                id="billing.E003",
            )
        )
    if api_key.startswith(("sk_live_", "rk_live_")) and settings.DEBUG:
        problems.append(
            Error(
                "A live Stripe key with DEBUG on: error pages would show settings and data to anyone.",
                hint="Set DEBUG=false in production, or use a test key (sk_test_…) for development.",
                id="billing.E004",
            )
        )
    if settings.NUM_PROXIES and settings.METRICS_ENABLED and not settings.METRICS_TOKEN:
        problems.append(
            Warning(
                "NUM_PROXIES is set but METRICS_TOKEN is not: behind a proxy /metrics answers nobody.",
                hint="Set METRICS_TOKEN and scrape with Authorization: Bearer <token>, or METRICS_ENABLED=false.",
                id="billing.W001",
            )
        )
    return problems
