from django.urls import path
from rest_framework.routers import SimpleRouter

from agents.api import AdminSeedCostsApi, AgentCostsApi, AgentRunApi, AgentRunViewSet, ChargeCreateApi, HoldCreateApi
from agents.services import TOOL_OPTIONS

router = SimpleRouter(trailing_slash=False)
router.register("agents/runs", AgentRunViewSet, basename="agent-run")

# Under /api/: the data agents and their runs.
urlpatterns = [
    *[path(agent_id, AgentRunApi.as_view(agent_id=agent_id), name=agent_id) for agent_id in TOOL_OPTIONS],
    *router.urls,
]

# Under /billing/ (routed with billing's own, and switched off with them): prices and metering.
billing_urlpatterns = [
    path("agent-costs", AgentCostsApi.as_view(), name="agent-costs"),
    path("admin/seed-costs", AdminSeedCostsApi.as_view(), name="admin-seed-costs"),
    path("charges", ChargeCreateApi.as_view(), name="charges"),
    path("holds", HoldCreateApi.as_view(), name="holds"),
]
