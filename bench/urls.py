"""The project's routes plus `GET /bench/empty`: the cheapest authenticated DRF request, as a yardstick."""

from django.urls import path
from rest_framework.permissions import IsAuthenticated
from rest_framework.response import Response
from rest_framework.views import APIView

from config.urls import handler404, handler500  # noqa: F401
from config.urls import urlpatterns as project_urlpatterns


class EmptyApi(APIView):
    permission_classes = [IsAuthenticated]

    def get(self, request):
        return Response({})


urlpatterns = [path("bench/empty", EmptyApi.as_view()), *project_urlpatterns]
