"""Who may call what: reads need the view permission of the data, job starts need run_recovery, the review
items and their decisions need the review permission (the rule of the review screens, recovery.review.rules)."""

from rest_framework.permissions import BasePermission

from recovery.review.rules import REVIEW_PERMISSION, REVIEWER_GROUP, review_allowed


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


class CanReview(BasePermission):
    """Reviewing over the API is reviewing on the screen: recovery.review.rules.review_allowed decides both."""

    message = f"Reviewing needs the {REVIEW_PERMISSION} permission (the {REVIEWER_GROUP} group)."

    def has_permission(self, request, view) -> bool:
        return review_allowed(request.user)
