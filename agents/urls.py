from django.urls import path

from agents.api import AgentRunApi
from agents.runner import TOOLS

urlpatterns = [path(agent_id, AgentRunApi.as_view(agent_id=agent_id), name=agent_id) for agent_id in TOOLS]
