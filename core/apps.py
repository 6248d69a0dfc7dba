from django.apps import AppConfig
from django.contrib.admin.apps import AdminConfig as DjangoAdminConfig
from django.http import HttpRequest
from django.utils.http import parse_header_parameters

from core.middleware import is_text_encoding


class AdminConfig(DjangoAdminConfig):
    """Django's admin, served by `core.admin_site.StaffAdminSite` (two-factor aware)."""

    default_site = "core.admin_site.StaffAdminSite"


class CoreConfig(AppConfig):
    """What every app uses over HTTP: the error shape, parsers, pagination, OpenAPI hooks, the
    Idempotency-Key header, /health and /metrics. It imports no other app of the project."""

    name = "core"

    def ready(self) -> None:
        # Django takes a declared charset as the request's encoding when `codecs` knows its name,
        # and a name such as `rot13` or `zlib` (not a text encoding) then fails while the request
        # object is built — before any middleware — as a 500 whenever there is a query string.
        # Such a charset is ignored here; `RejectUnknownCharsetMiddleware` answers it with 415.
        HttpRequest._set_content_type_params = _set_text_content_type_params


def _set_text_content_type_params(self: HttpRequest, meta) -> None:
    """Django's `_set_content_type_params`, taking the charset only if it is a text encoding."""
    self.content_type, self.content_params = parse_header_parameters(meta.get("CONTENT_TYPE", ""))
    charset = self.content_params.get("charset")
    if charset is not None and is_text_encoding(charset):
        self.encoding = charset
