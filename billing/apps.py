from django.apps import AppConfig


class BillingConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "billing"

    def ready(self) -> None:
        from billing import checks  # noqa: F401  (registers the secrets checks)
        from billing.packages import all_packages

        # Fail at start-up, naming the problem, if the packages file is malformed.
        all_packages()
