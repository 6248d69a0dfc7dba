from celery import shared_task

from billing import events, stripe_client
from billing.expiry import expire_due_credits
from billing.holds import expire_due_holds


@shared_task(name="billing.expire_holds")
def expire_holds_task() -> int:
    return expire_due_holds()


@shared_task(name="billing.expire_credits")
def expire_credits_task() -> int:
    return expire_due_credits()


@shared_task(name="billing.deliver_webhook")
def deliver_webhook_task(delivery_id: int) -> str | None:
    return events.deliver(delivery_id)


@shared_task(name="billing.deliver_webhooks")
def deliver_webhooks_task() -> int:
    return events.deliver_due()


@shared_task(name="billing.mirror_stripe_objects")
def mirror_stripe_objects_task(*, customer: dict | None = None, session: dict | None = None) -> None:
    stripe_client.mirror_objects(customer=customer, session=session)
