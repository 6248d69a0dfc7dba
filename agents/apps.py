from django.apps import AppConfig


class AgentsConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "agents"

    def ready(self) -> None:
        # Registers the runner's task and hold_expired receiver; adds the runs' checks to reconcile_ledger.
        from agents import tasks  # noqa: F401
        from agents.reconcile import check_runs
        from billing.reconcile import register_check

        register_check(check_runs)
