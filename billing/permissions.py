"""Staff endpoints require staff status *and* the finance permission for the action."""

from rest_framework.permissions import BasePermission


def staff_with(permission: str) -> type[BasePermission]:
    class StaffWithPermission(BasePermission):
        message = "You do not have permission to perform this action."

        def has_permission(self, request, view) -> bool:
            method = request.method.lower()
            if method not in view.http_method_names or not hasattr(view, method):
                # A method the view does not have is a 405 (with Allow) for everyone: DRF checks
                # permissions before it looks for the handler, which would answer 403 instead.
                return True
            user = request.user
            return bool(user and user.is_authenticated and user.is_staff and user.has_perm(permission))

    StaffWithPermission.__name__ = f"StaffWith_{permission.replace('.', '_')}"
    return StaffWithPermission


CanGrantCredits = staff_with("billing.grant_credits")
CanSettleShortfall = staff_with("billing.settle_shortfall")
CanEditAgentCosts = staff_with("agents.change_agentcost")
