from django.conf import settings
from django.urls import path
from drf_spectacular.utils import extend_schema, extend_schema_view
from rest_framework import status
from rest_framework.exceptions import AuthenticationFailed
from rest_framework.response import Response
from rest_framework_simplejwt.views import TokenObtainPairView, TokenRefreshView

from core.errors import error_body
from users.api import (
    LogInSerializer,
    LogoutApi,
    MeApi,
    PasswordChangeApi,
    RefreshInputSerializer,
    RegisterApi,
    TokenPairSerializer,
)


class ThrottledTokenView(TokenObtainPairView):
    """Log-in; an account (or address) locked out by django-axes after repeated failures gets
    429 ACCOUNT_LOCKED, even with the right password."""

    throttle_scope = "auth"

    @extend_schema(request=LogInSerializer, responses={200: TokenPairSerializer})
    def post(self, request, *args, **kwargs):
        try:
            response = super().post(request, *args, **kwargs)
        except AuthenticationFailed:
            if not getattr(request, "axes_locked_out", False):
                raise
            minutes = int(settings.AXES_COOLOFF_TIME.total_seconds() // 60)
            detail = f"Too many failed log-ins for this account; try again in {minutes} minutes."
            return Response(error_body("ACCOUNT_LOCKED", detail), status=status.HTTP_429_TOO_MANY_REQUESTS)
        return response


@extend_schema_view(post=extend_schema(request=RefreshInputSerializer, responses={200: TokenPairSerializer}))
class ThrottledRefreshView(TokenRefreshView):
    throttle_scope = "auth"


urlpatterns = [
    path("register", RegisterApi.as_view(), name="register"),
    path("token", ThrottledTokenView.as_view(), name="token"),
    path("token/refresh", ThrottledRefreshView.as_view(), name="token-refresh"),
    path("me", MeApi.as_view(), name="me"),
    path("logout", LogoutApi.as_view(), name="logout"),
    path("password", PasswordChangeApi.as_view(), name="password-change"),
]
