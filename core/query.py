"""Query strings are checked like bodies: a parameter the operation does not document is a 400."""

from django_filters import CharFilter
from rest_framework import serializers
from rest_framework.filters import BaseFilterBackend

# At most this many unknown names are listed back (each cut to 100 characters).
_LISTED = 20


def reject_unknown_query_parameters(request, allowed) -> None:
    unknown = sorted(set(request.query_params) - set(allowed))
    if unknown:
        raise serializers.ValidationError({name[:100]: ["Unknown query parameter."] for name in unknown[:_LISTED]})


class RejectUnknownQueryParameters(BaseFilterBackend):
    """For list and detail views, after DjangoFilterBackend: the view's filters and its paginator's
    parameters are allowed, nothing else. An empty value for a typed filter (`kind=`,
    `created_after=`) is refused too: django-filter would silently skip it."""

    def filter_queryset(self, request, queryset, view):
        allowed = set()
        filterset_class = getattr(view, "filterset_class", None)
        if filterset_class is not None:
            allowed |= set(filterset_class.base_filters)
            empty = sorted(
                name
                for name, filter_ in filterset_class.base_filters.items()
                if request.query_params.get(name) == "" and not isinstance(filter_, CharFilter)
            )
            if empty:
                raise serializers.ValidationError({name: ["A value is required."] for name in empty})
        paginator = getattr(view, "paginator", None)
        for attribute in ("page_query_param", "page_size_query_param"):
            if paginator is not None and getattr(paginator, attribute, None):
                allowed.add(getattr(paginator, attribute))
        reject_unknown_query_parameters(request, allowed)
        return queryset
