from django.urls import path
from rest_framework.routers import SimpleRouter

from agents.api import TOOL_OPTIONS, AgentRunApi, AgentRunViewSet

router = SimpleRouter(trailing_slash=False)
router.register("agents/runs", AgentRunViewSet, basename="agent-run")

urlpatterns = [
    *[path(agent_id, AgentRunApi.as_view(agent_id=agent_id), name=agent_id) for agent_id in TOOL_OPTIONS],
    *router.urls,
]
