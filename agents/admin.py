from django.contrib import admin

from agents.models import AgentCost, AgentRun
from billing.admin import ReadOnlyAdmin


@admin.register(AgentCost)
class AgentCostAdmin(admin.ModelAdmin):
    list_display = ["agent_id", "name", "cost_credits", "default_cost_credits", "is_active", "updated_at"]
    list_editable = ["cost_credits", "is_active"]
    list_filter = ["is_active"]
    search_fields = ["agent_id", "name"]
    readonly_fields = ["default_cost_credits", "created_at", "updated_at"]


@admin.register(AgentRun)
class AgentRunAdmin(ReadOnlyAdmin):
    list_display = ["id", "user", "agent_id", "status", "credits_charged", "created_at"]
    list_filter = ["status", "agent_id"]
    search_fields = ["user__email", "id"]
    list_select_related = ["user"]
