from django.apps import AppConfig
from django.contrib.admin.apps import AdminConfig as DjangoAdminConfig


class AdminConfig(DjangoAdminConfig):
    """Django's admin, served by `core.admin_site.StaffAdminSite` (two-factor aware)."""

    default_site = "core.admin_site.StaffAdminSite"


class CoreConfig(AppConfig):
    """What every app uses over HTTP: the error shape, parsers, pagination, OpenAPI hooks, the
    Idempotency-Key header, /health and /metrics. It imports no other app of the project."""

    name = "core"
