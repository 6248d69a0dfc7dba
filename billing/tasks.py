from celery import shared_task

from billing import auto_recharge, events, notifications, stripe_client
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
def mirror_stripe_objects_task(
    *, customer: dict | None = None, session: dict | None = None, payment_method: str | None = None
) -> None:
    stripe_client.mirror_objects(customer=customer, session=session, payment_method=payment_method)


@shared_task(name="billing.send_emails")
def send_emails_task() -> int:
    return notifications.send_due()


@shared_task(name="billing.start_auto_recharge")
def start_auto_recharge_task(attempt_id: int) -> str | None:
    # No Celery retry: an attempt Stripe did not answer is asked again by `retry_auto_recharges`
    # once its lease (AUTO_RECHARGE_RETRY_SECONDS) is over, so two askers never overlap.
    try:
        return auto_recharge.start(attempt_id)
    except stripe_client.StripeUnavailable:
        return None


@shared_task(name="billing.retry_auto_recharges")
def retry_auto_recharges_task() -> int:
    return auto_recharge.retry_stalled()
