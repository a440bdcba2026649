from django.apps import AppConfig
from django.db.models.signals import post_migrate


def _lead_window_after_migrate(sender, app_config=None, using="default", **kwargs) -> None:
    """After every migrate: the functions of ops.lead_window_14d as recovery.lead_window defines them now
    (a changed definition or claim window also rebuilds the figure)."""
    if app_config is None or app_config.label != "recovery":
        return
    from recovery.lead_window import lead_window_sync  # noqa: PLC0415 - needs the app registry

    lead_window_sync(using=using)


def _reviewer_group_after_migrate(sender, app_config=None, using="default", **kwargs) -> None:
    """After every migrate (and every test flush): the `reviewer` group and its permissions.

    Runs once recovery's tables exist (recovery is migrated after identity), so the group gets the
    view permissions of both apps.
    """
    if app_config is None or app_config.label != "recovery":
        return
    from recovery.review.groups import reviewer_group_ensure  # noqa: PLC0415 - needs the app registry

    reviewer_group_ensure()


class RecoveryConfig(AppConfig):
    name = "recovery"
    verbose_name = "Recovery"

    def ready(self) -> None:
        from django_q.signals import post_spawn  # noqa: PLC0415 - needs the app registry

        from identity.runs import job_run_succeeded  # noqa: PLC0415 - needs the app registry
        from recovery.heartbeat import worker_heartbeat_start  # noqa: PLC0415 - needs the app registry
        from recovery.review.audit import audit_sample_after_run  # noqa: PLC0415 - needs the app registry

        # Each django-q2 worker process, once spawned, keeps a heartbeat row fresh (/readyz reads it).
        post_spawn.connect(worker_heartbeat_start, dispatch_uid="recovery.qcluster_heartbeat")
        post_migrate.connect(_lead_window_after_migrate, dispatch_uid="recovery.lead_window_sync")
        post_migrate.connect(_reviewer_group_after_migrate, dispatch_uid="recovery.reviewer_group")
        # After a matching or recovery run that made links: an audit sample of them (docs/review.md).
        job_run_succeeded.connect(audit_sample_after_run, dispatch_uid="recovery.audit_sample_after_run")
