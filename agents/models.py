import json
import uuid
import zlib

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import Q

from core.fields import KEY_MAX_LENGTH, ExactCharField

# What one run of an agent may cost (the database checks it too).
MIN_COST_CREDITS, MAX_COST_CREDITS = 1, 10_000


class AgentCost(models.Model):
    """The price of one agent run. A price is "edited" when it differs from the seeded default."""

    agent_id = models.SlugField(max_length=64, unique=True)
    name = models.CharField(max_length=120)
    description = models.TextField(blank=True, default="")
    cost_credits = models.PositiveIntegerField(
        validators=[MinValueValidator(MIN_COST_CREDITS), MaxValueValidator(MAX_COST_CREDITS)]
    )
    default_cost_credits = models.PositiveIntegerField(help_text="The catalogue price it was last seeded with.")
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        db_table = "agent_costs"
        ordering = ["agent_id"]
        constraints = [
            models.CheckConstraint(
                condition=Q(cost_credits__gte=MIN_COST_CREDITS, cost_credits__lte=MAX_COST_CREDITS),
                name="agent_cost_in_range",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.agent_id} ({self.cost_credits} credits)"

    @property
    def is_price_edited(self) -> bool:
        return self.cost_credits != self.default_cost_credits


class AgentCostChange(models.Model):
    """Price history: every change of an agent's cost or active flag, who made it and why."""

    agent = models.ForeignKey(AgentCost, on_delete=models.CASCADE, related_name="changes")
    old_cost_credits = models.PositiveIntegerField(null=True, blank=True)
    new_cost_credits = models.PositiveIntegerField()
    old_is_active = models.BooleanField(null=True, blank=True)
    new_is_active = models.BooleanField()
    changed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    reason = models.CharField(max_length=500)
    changed_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "agent_cost_changes"
        ordering = ["-changed_at", "-id"]

    def __str__(self) -> str:
        return f"{self.agent_id}: {self.old_cost_credits} → {self.new_cost_credits}"


class RunStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    EXPIRED = "expired", "Expired"


class AgentRun(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="agent_runs")
    agent_id = models.CharField(max_length=64)
    status = models.CharField(max_length=16, choices=RunStatus.choices, default=RunStatus.QUEUED)
    cost_credits = models.PositiveIntegerField(default=0)
    credits_charged = models.PositiveIntegerField(default=0)
    balance_after = models.BigIntegerField(null=True, blank=True)
    hold = models.ForeignKey("billing.CreditHold", on_delete=models.PROTECT, null=True, blank=True, related_name="runs")
    idempotency_key = ExactCharField(max_length=KEY_MAX_LENGTH, null=True, blank=True)
    request_fingerprint = ExactCharField(max_length=64, blank=True, default="")
    configuration = models.JSONField(default=dict, blank=True)
    input_rows = models.PositiveIntegerField(default=0)
    input_blob = models.BinaryField(null=True, blank=True, help_text="Compressed input, kept until the run ends.")
    result_blob = models.BinaryField(null=True, blank=True, help_text="Compressed JSON result.")
    result_summary = models.JSONField(null=True, blank=True)
    error = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "agent_runs"
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(fields=["user", "idempotency_key"], name="uniq_run_user_idempotency_key"),
        ]
        indexes = [models.Index(fields=["user", "created_at"], name="run_user_history_idx")]

    def __str__(self) -> str:
        return f"{self.agent_id} run {self.id} ({self.status})"

    @property
    def result(self) -> dict | None:
        return unpack(self.result_blob)

    @property
    def is_finished(self) -> bool:
        return self.status in (RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.EXPIRED)

    @property
    def failure_reason(self) -> str:
        """Why a failed or expired run ended, in a sentence for its user (the error without its class)."""
        return self.error.split(": ", 1)[-1] if self.error else f"The run {self.status}."


def pack(value) -> bytes:
    return zlib.compress(json.dumps(value, separators=(",", ":"), default=str).encode(), 6)


def unpack(blob) -> dict | None:
    return None if blob is None else json.loads(zlib.decompress(bytes(blob)))
