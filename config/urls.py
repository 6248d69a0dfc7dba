from django.conf import settings
from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from agents.urls import billing_urlpatterns as agents_billing_urlpatterns
from billing.admin_views import reports_view, revenue_view
from core.api import HealthApi, metrics_view

urlpatterns = [
    path("health", HealthApi.as_view(), name="health"),
    path("metrics", metrics_view, name="metrics"),
    path("admin/reports/", admin.site.admin_view(reports_view), name="finance-reports"),
    path("admin/revenue/", admin.site.admin_view(revenue_view), name="finance-revenue"),
    path("admin/", admin.site.urls),
    path("auth/", include("users.urls")),
    path("api/schema", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs", SpectacularSwaggerView.as_view(url_name="schema"), name="docs"),
    path("api/", include("agents.urls")),
]

# The rollback switch: with billing off its routes do not exist at all (404).
if settings.BILLING_ENABLED:
    urlpatterns += [path("billing/", include("billing.urls")), path("billing/", include(agents_billing_urlpatterns))]

handler404 = "core.errors.json_not_found"
handler500 = "core.errors.json_server_error"
