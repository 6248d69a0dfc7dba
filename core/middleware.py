"""Request checks that every endpoint needs before any parser runs."""

import codecs

from django.http import JsonResponse


class RejectUnknownCharsetMiddleware:
    """A body declared in a charset that is not a text encoding (`charset=rot13`, `zlib`, a
    name Python does not know) is refused with 415 instead of failing inside a parser (a 500)."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        charset = _declared_charset(request.META.get("CONTENT_TYPE", ""))
        if charset is not None and not is_text_encoding(charset):
            return JsonResponse(
                {"error_code": "UNSUPPORTED_MEDIA_TYPE", "detail": f"Unsupported charset {charset[:40]!r}; use utf-8."},
                status=415,
            )
        return self.get_response(request)


def _declared_charset(content_type: str) -> str | None:
    for parameter in content_type.split(";")[1:]:
        name, _, value = parameter.partition("=")
        if name.strip().lower() == "charset":
            return value.strip().strip('"')
    return None


def is_text_encoding(name: str) -> bool:
    try:
        info = codecs.lookup(name)
    except (LookupError, ValueError):
        return False
    return getattr(info, "_is_text_encoding", True)
