import io

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from rest_framework.parsers import JSONParser


class LimitedJSONParser(JSONParser):
    """JSON bodies up to DATA_UPLOAD_MAX_MEMORY_SIZE; larger ones are refused (413) unread.

    DRF reads the request stream itself, so Django's own body-size check never sees JSON."""

    def parse(self, stream, media_type=None, parser_context=None):
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        request = (parser_context or {}).get("request")
        declared = int(request.META.get("CONTENT_LENGTH") or 0) if request is not None else 0
        if limit is None:
            return super().parse(stream, media_type, parser_context)
        if declared > limit:
            raise RequestDataTooBig("The request body is too large.")
        body = stream.read(limit + 1)  # also bounds bodies sent without a Content-Length
        if len(body) > limit:
            raise RequestDataTooBig("The request body is too large.")
        return super().parse(io.BytesIO(body), media_type, parser_context)
