import os

from django.core.checks import run_checks
from django.core.exceptions import ImproperlyConfigured
from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
application = get_wsgi_application()

# Refuse to serve with badly pasted secrets (manage.py commands run the same checks).
_problems = [problem for problem in run_checks(tags=["secrets"]) if problem.is_serious()]
if _problems:
    raise ImproperlyConfigured("; ".join(str(problem) for problem in _problems))
