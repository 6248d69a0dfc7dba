import io

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser

# Deeper JSON is refused (400): no request of ours nests more than a few levels, and deep
# nesting would otherwise exhaust the interpreter's recursion limit somewhere later (a 500).
MAX_JSON_DEPTH = 64


def json_depth_exceeds(value, limit: int = MAX_JSON_DEPTH) -> bool:
    """True if `value` nests lists/objects more than `limit` deep (walked level by level,
    without recursion)."""
    level, depth = [value], 0
    while level:
        depth += 1
        if depth > limit:
            return True
        deeper = []
        for item in level:
            for child in item.values() if type(item) is dict else item:
                if type(child) is dict or type(child) is list:
                    deeper.append(child)
        level = deeper
    return False


class LimitedJSONParser(JSONParser):
    """JSON bodies up to DATA_UPLOAD_MAX_MEMORY_SIZE; larger ones are refused (413) unread.

    DRF reads the request stream itself, so Django's own body-size check never sees JSON."""

    def parse(self, stream, media_type=None, parser_context=None):
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        request = (parser_context or {}).get("request")
        declared = int(request.META.get("CONTENT_LENGTH") or 0) if request is not None else 0
        if limit is None:
            return _shallow(lambda: super(LimitedJSONParser, self).parse(stream, media_type, parser_context))
        if declared > limit:
            raise RequestDataTooBig("The request body is too large.")
        body = stream.read(limit + 1)  # also bounds bodies sent without a Content-Length
        if len(body) > limit:
            raise RequestDataTooBig("The request body is too large.")
        return _shallow(lambda: super(LimitedJSONParser, self).parse(io.BytesIO(body), media_type, parser_context))


def _shallow(parse):
    try:
        data = parse()
    except RecursionError:
        data = None
    else:
        if type(data) not in (dict, list) or not json_depth_exceeds(data):
            return data
    raise ParseError(f"JSON nested more than {MAX_JSON_DEPTH} levels deep is not accepted.")
