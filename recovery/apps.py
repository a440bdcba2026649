from django.apps import AppConfig


class RecoveryConfig(AppConfig):
    name = "recovery"
    verbose_name = "Recovery"

    def ready(self) -> None:
        from django_q.signals import post_spawn  # noqa: PLC0415 - needs the app registry

        from recovery.heartbeat import worker_heartbeat_start  # noqa: PLC0415

        # Each django-q2 worker process, once spawned, keeps a heartbeat row fresh (/readyz reads it).
        post_spawn.connect(worker_heartbeat_start, dispatch_uid="recovery.qcluster_heartbeat")
