from __future__ import annotations

from django.apps import AppConfig


class StreamingAppConfig(AppConfig):
    name = "streaming_app"
    verbose_name = "Persistent text streams"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.db.models.signals import pre_delete

        from . import checks  # noqa: F401  (registers the system checks)
        from .deletion import DISPATCH_UID, lock_deleted_streams
        from .fanout.hub import track_run
        from .models import Stream
        from .signals import stream_run_started

        # A run started in this process hears cancels through the process's hub.
        stream_run_started.connect(track_run, dispatch_uid="streaming_app.fanout.hub.track_run")
        # However streams are deleted, their rows are locked and their runs stopped.
        pre_delete.connect(lock_deleted_streams, sender=Stream, dispatch_uid=DISPATCH_UID)
