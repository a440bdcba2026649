"""Who may call what: reads need the view permission of the data, job starts need run_recovery."""

from rest_framework.permissions import BasePermission


class HasViewPermission(BasePermission):
    """The user holds `view_<model>` of the view's `permission_model` (the data it shows)."""

    message = "You do not have permission to view this data."

    def has_permission(self, request, view) -> bool:
        model = view.permission_model
        codename = f"{model._meta.app_label}.view_{model._meta.model_name}"
        return bool(request.user and request.user.is_authenticated and request.user.has_perm(codename))


class CanRunRecovery(BasePermission):
    """Starting jobs is an explicit grant: recovery.run_recovery."""

    message = "Starting jobs needs the recovery.run_recovery permission."

    def has_permission(self, request, view) -> bool:
        return bool(request.user and request.user.is_authenticated and request.user.has_perm("recovery.run_recovery"))
