from celery import shared_task

from agents.runner import execute_stored_run


@shared_task(name="agents.execute_run")
def execute_run_task(run_id: str) -> str | None:
    run = execute_stored_run(run_id=run_id)
    return run.status if run else None
