"""What `reconcile_ledger` checks of agent runs: each run's state agrees with the ledger.

- every succeeded run has exactly one charge row, equal to its `credits_charged` (none when
  it was run without billing: no hold, nothing charged);
- no failed or expired run has a charge row;
- a run with a hold is finished exactly when its hold is settled.
"""

from __future__ import annotations

from collections.abc import Iterator

from django.db.models import Count, Sum

from agents.models import AgentRun, RunStatus
from billing.models import CreditTransaction, HoldStatus, TransactionKind
from billing.reconcile import Drift

_FINISHED = (RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.EXPIRED)


def check_runs() -> Iterator[Drift]:
    charges = {
        run_id: (rows, total)
        for run_id, rows, total in CreditTransaction.objects.filter(
            kind=TransactionKind.CHARGE, agent_run_id__isnull=False
        )
        .values_list("agent_run_id")
        .annotate(rows=Count("id"), total=Sum("amount"))
    }
    runs = AgentRun.objects.values_list("id", "status", "credits_charged", "hold_id", "hold__status").iterator(
        chunk_size=2000
    )
    for run_id, status, credits_charged, hold_id, hold_status in runs:
        rows, total = charges.get(run_id, (0, 0))
        subject = f"run {run_id}"
        if status == RunStatus.SUCCEEDED:
            expected_rows = 1 if hold_id is not None or credits_charged else 0
            if rows != expected_rows or -(total or 0) != credits_charged:
                yield Drift(
                    "run",
                    subject,
                    f"succeeded, credits_charged {credits_charged}; {rows} charge row(s) of {-(total or 0)}",
                )
        elif status in (RunStatus.FAILED, RunStatus.EXPIRED) and rows:
            yield Drift("run", subject, f"{status}, yet {rows} charge row(s) of {-(total or 0)}")
        if hold_id is not None and (status in _FINISHED) == (hold_status == HoldStatus.PENDING):
            yield Drift("run", subject, f"{status} while its hold is {hold_status}")
