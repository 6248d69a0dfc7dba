from django.core.management.base import BaseCommand

from agents.services import seed_agent_costs


class Command(BaseCommand):
    help = "Create the 22 default agent costs. Keeps prices staff have edited unless --reset."

    def add_arguments(self, parser):
        parser.add_argument("--reset", action="store_true", help="Overwrite edited prices with the defaults.")

    def handle(self, *args, reset: bool, **options):
        report = seed_agent_costs(reset=reset)
        self.stdout.write(
            self.style.SUCCESS(
                f"Agent costs: {report.created} created, {report.updated} updated, {report.kept} edited price(s) kept."
            )
        )
