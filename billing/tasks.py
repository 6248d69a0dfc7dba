from celery import shared_task

from billing.holds import expire_due_holds


@shared_task(name="billing.expire_holds")
def expire_holds_task() -> int:
    return expire_due_holds()
