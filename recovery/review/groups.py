"""The `reviewer` group: review doubtful leads and view the identity and recovery tables, nothing else."""

from __future__ import annotations

from django.apps import apps
from django.contrib.auth.models import Group, Permission
from django.contrib.contenttypes.models import ContentType

from identity.models import IdentityJudgement
from recovery.review.rules import REVIEW_PERMISSION_CODENAME, REVIEWER_GROUP


def reviewer_group_ensure(*, apps_labels: tuple[str, ...] = ("identity", "recovery")) -> None:
    """Create (or bring up to date) the `reviewer` group and the `identity.review_lead` permission.

    The group may review leads and view every identity and recovery table in the admin, nothing
    else: no add, change or delete anywhere. Idempotent; runs after every migrate.
    """
    review, _ = Permission.objects.get_or_create(
        codename=REVIEW_PERMISSION_CODENAME,
        content_type=ContentType.objects.get_for_model(IdentityJudgement),
        defaults={"name": "Can review doubtful leads and decide them"},
    )
    wanted = [review]
    for label in apps_labels:
        for model in apps.get_app_config(label).get_models():
            content_type = ContentType.objects.get_for_model(model, for_concrete_model=False)
            permission, _ = Permission.objects.get_or_create(
                codename=f"view_{model._meta.model_name}", content_type=content_type,
                defaults={"name": f"Can view {model._meta.verbose_name_raw}"},
            )
            wanted.append(permission)
    group, _ = Group.objects.get_or_create(name=REVIEWER_GROUP)
    group.permissions.set(wanted)
