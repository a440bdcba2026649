from django.apps import AppConfig
from django.db.models.signals import post_migrate


def _reviewer_group_after_migrate(sender, app_config=None, using="default", **kwargs) -> None:
    """After every migrate (and every test flush): the `reviewer` group and its permissions.

    Runs once recovery's tables exist too (it is migrated after identity), so the group gets
    the view permissions of both apps.
    """
    if app_config is None or app_config.label != "recovery":
        return
    from identity.review import reviewer_group_ensure  # noqa: PLC0415

    reviewer_group_ensure()


class IdentityConfig(AppConfig):
    name = "identity"
    verbose_name = "Identity"

    def ready(self) -> None:
        post_migrate.connect(_reviewer_group_after_migrate, dispatch_uid="identity.reviewer_group")
