"""The finance roles: "Finance" moves money and edits prices; "Finance viewer" only looks.

Staff users get their powers from these groups (or are superusers); the API's staff
endpoints and the admin check the same permissions.
"""

from django.apps import apps as django_apps
from django.contrib.auth.management import create_permissions

FINANCE = "Finance"
FINANCE_VIEWER = "Finance viewer"

_VIEWABLE = [
    ("billing", "wallet"),
    ("billing", "credittransaction"),
    ("billing", "credithold"),
    ("billing", "purchase"),
    ("billing", "creditshortfall"),
    ("billing", "stripewebhookevent"),
    ("billing", "creditapprovalrequest"),
    ("agents", "agentcost"),
    ("agents", "agentcostchange"),
    ("agents", "agentrun"),
    ("users", "user"),
]
VIEWER_PERMISSIONS = [(app, f"view_{model}") for app, model in _VIEWABLE] + [
    ("billing", "export_transactions"),
    ("billing", "view_finance_reports"),
]
FINANCE_PERMISSIONS = [
    *VIEWER_PERMISSIONS,
    ("billing", "grant_credits"),
    ("billing", "approve_credit_requests"),
    ("billing", "settle_shortfall"),
    ("billing", "reprocess_webhook_events"),
    ("agents", "change_agentcost"),
]


def ensure_finance_groups(apps=django_apps) -> None:
    """Create or complete both groups; `apps` is a migration's registry or the live one."""
    for label in ("users", "billing", "agents"):
        config = apps.get_app_config(label)
        if getattr(config, "models_module", None) is None:
            config.models_module = True  # migration stubs: let create_permissions see the models
        create_permissions(config, apps=apps, verbosity=0)
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    for name, wanted in ((FINANCE, FINANCE_PERMISSIONS), (FINANCE_VIEWER, VIEWER_PERMISSIONS)):
        group, _ = Group.objects.get_or_create(name=name)
        for app_label, codename in wanted:
            try:
                permission = Permission.objects.get(content_type__app_label=app_label, codename=codename)
            except Permission.DoesNotExist:
                if apps is django_apps:
                    raise
                continue  # a model an earlier migration does not know yet; its own migration adds it
            group.permissions.add(permission)
