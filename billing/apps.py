from django.apps import AppConfig


class BillingConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "billing"

    def ready(self) -> None:
        # Registers the secrets checks, and the tasks found by name (`celery_app.tasks[...]`).
        from billing import checks, tasks  # noqa: F401
        from billing.packages import all_packages

        # Fail at start-up, naming the problem, if the packages file is malformed.
        all_packages()
