from __future__ import annotations

from django.apps import AppConfig


class StreamingAppConfig(AppConfig):
    name = "streaming_app"
    verbose_name = "Persistent text streams"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from . import checks  # noqa: F401  (registers the system checks)
        from .fanout.hub import track_run
        from .signals import stream_run_started

        # A run started in this process hears cancels through the process's hub.
        stream_run_started.connect(track_run, dispatch_uid="streaming_app.fanout.hub.track_run")
