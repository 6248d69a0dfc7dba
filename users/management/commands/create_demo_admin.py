import os

from django.core.management.base import BaseCommand

from users.models import User


class Command(BaseCommand):
    help = "Create (or keep) a demo superuser for local use. Never run this in production."

    def add_arguments(self, parser):
        parser.add_argument("--email", default=os.environ.get("DEMO_ADMIN_EMAIL", "admin@example.com"))
        parser.add_argument("--password", default=os.environ.get("DEMO_ADMIN_PASSWORD", "admin-demo-password"))

    def handle(self, *args, email: str, password: str, **options):
        user, created = User.objects.get_or_create(email=email, defaults={"is_staff": True, "is_superuser": True})
        if created:
            user.set_password(password)
            user.save(update_fields=["password"])
            self.stdout.write(self.style.SUCCESS(f"Demo admin created: {email} / {password}"))
        else:
            self.stdout.write(f"Demo admin already exists: {email}")
