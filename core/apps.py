from django.contrib.admin.apps import AdminConfig as DjangoAdminConfig


class AdminConfig(DjangoAdminConfig):
    """Django's admin, served by `core.admin_site.StaffAdminSite` (two-factor aware)."""

    default_site = "core.admin_site.StaffAdminSite"
