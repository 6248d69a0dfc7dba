from django.urls import path
from rest_framework.routers import SimpleRouter

from billing import api

router = SimpleRouter(trailing_slash=False)
router.register("transactions", api.TransactionViewSet, basename="transaction")

urlpatterns = [
    path("packages", api.PackagesApi.as_view(), name="packages"),
    path("wallet", api.WalletApi.as_view(), name="wallet"),
    path("limits", api.LimitsApi.as_view(), name="limits"),
    path("admin/limits", api.AdminLimitsApi.as_view(), name="admin-limits"),
    path("admin/grant", api.AdminGrantApi.as_view(), name="admin-grant"),
    path("admin/settle-shortfall", api.AdminSettleShortfallApi.as_view(), name="admin-settle-shortfall"),
    path("payment-method", api.PaymentMethodApi.as_view(), name="payment-method"),
    path("payment-method/setup", api.PaymentMethodSetupApi.as_view(), name="payment-method-setup"),
    path("auto-recharge", api.AutoRechargeApi.as_view(), name="auto-recharge"),
    path("balance-alerts", api.BalanceAlertsApi.as_view(), name="balance-alerts"),
    path("checkout", api.CheckoutApi.as_view(), name="checkout"),
    path("webhook", api.StripeWebhookApi.as_view(), name="stripe-webhook"),
    path("holds/<int:hold_id>", api.HoldDetailApi.as_view(), name="hold-detail"),
    path("holds/<int:hold_id>/capture", api.HoldCaptureApi.as_view(), name="hold-capture"),
    path("holds/<int:hold_id>/release", api.HoldReleaseApi.as_view(), name="hold-release"),
    *router.urls,
]
