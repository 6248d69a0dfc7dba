from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.http import HttpResponseNotAllowed
from django.shortcuts import redirect
from django.urls import path

from agents.models import AgentCost, AgentCostChange, AgentRun
from agents.services import agent_cost_update, seed_agent_costs
from billing.admin import ReadOnlyAdmin, admin_link


class AgentCostForm(forms.ModelForm):
    change_reason = forms.CharField(
        max_length=500, required=False, help_text="Why the price or availability changes (kept in the price history)."
    )

    class Meta:
        model = AgentCost
        fields = ["agent_id", "name", "description", "cost_credits", "is_active"]

    def clean(self):
        data = super().clean()
        changing = self.instance.pk and any(f in self.changed_data for f in ("cost_credits", "is_active"))
        if changing and not (data.get("change_reason") or "").strip():
            self.add_error("change_reason", "Say why the price or availability changes.")
        return data


class AgentCostChangeInline(admin.TabularInline):
    model = AgentCostChange
    fk_name = "agent"
    extra = 0
    can_delete = False
    verbose_name_plural = "price history"
    fields = [
        "changed_at",
        "old_cost_credits",
        "new_cost_credits",
        "old_is_active",
        "new_is_active",
        "changed_by",
        "reason",
    ]
    readonly_fields = fields

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(AgentCost)
class AgentCostAdmin(admin.ModelAdmin):
    form = AgentCostForm
    list_display = ["agent_id", "name", "cost_credits", "default_cost_credits", "is_active", "updated_at"]
    list_filter = ["is_active"]
    search_fields = ["agent_id", "name"]
    readonly_fields = ["default_cost_credits", "created_at", "updated_at"]
    inlines = [AgentCostChangeInline]
    actions = ["reseed_defaults"]

    def get_readonly_fields(self, request, obj=None):
        return [*self.readonly_fields, "agent_id"] if obj else self.readonly_fields

    def has_delete_permission(self, request, obj=None):
        return False  # deactivate instead: past charges name the agent

    def save_model(self, request, obj, form, change):
        if not change:
            obj.default_cost_credits = obj.cost_credits
            super().save_model(request, obj, form, change)
            AgentCostChange.objects.create(
                agent=obj,
                new_cost_credits=obj.cost_credits,
                new_is_active=obj.is_active,
                changed_by=request.user,
                reason=form.cleaned_data.get("change_reason") or "Created",
            )
            return
        with transaction.atomic():
            AgentCost.objects.filter(pk=obj.pk).update(name=obj.name, description=obj.description)
            agent_cost_update(
                agent_id=obj.agent_id,
                cost_credits=form.cleaned_data["cost_credits"],
                is_active=form.cleaned_data["is_active"],
                actor_id=request.user.id,
                reason=form.cleaned_data.get("change_reason") or "Edited",
            )

    def get_urls(self):
        return [
            path("reseed/", self.admin_site.admin_view(self.reseed_view), name="agents_agentcost_reseed"),
            *super().get_urls(),
        ]

    def changelist_view(self, request, extra_context=None):
        extra_context = {**(extra_context or {}), "can_reseed": self.has_change_permission(request)}
        return super().changelist_view(request, extra_context=extra_context)

    @admin.action(description="Re-seed the 22 default agents (keeps edited prices)", permissions=["change"])
    def reseed_defaults(self, request, queryset):
        self._reseed(request)

    def reseed_view(self, request):
        """The changelist's "Re-seed default agents" button: the action without selecting a row
        (which an empty list would not even allow)."""
        if not self.has_change_permission(request):
            raise PermissionDenied
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        self._reseed(request)
        return redirect("admin:agents_agentcost_changelist")

    def _reseed(self, request) -> None:
        report = seed_agent_costs(actor_id=request.user.id)
        self.message_user(
            request,
            f"Default agents: {report.created} created, {report.updated} updated, {report.kept} edited price(s) kept.",
            messages.SUCCESS,
        )


@admin.register(AgentRun)
class AgentRunAdmin(ReadOnlyAdmin):
    list_display = [
        "id",
        "user",
        "agent_id",
        "status",
        "cost_credits",
        "credits_charged",
        "hold_link",
        "created_at",
        "finished_at",
    ]
    list_filter = ["status", "agent_id"]
    search_fields = ["user__email", "id"]
    list_select_related = ["user", "hold"]
    exclude = ["input_blob", "result_blob"]

    @admin.display(description="hold")
    def hold_link(self, run):
        return admin_link(run.hold, f"#{run.hold_id}") if run.hold_id else "—"
