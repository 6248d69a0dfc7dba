from django.urls import path
from rest_framework_simplejwt.views import TokenObtainPairView, TokenRefreshView

from users.api import LogoutApi, MeApi, PasswordChangeApi, RegisterApi


class ThrottledTokenView(TokenObtainPairView):
    throttle_scope = "auth"


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
