from __future__ import annotations

from django.apps import AppConfig


class StreamingAppConfig(AppConfig):
    name = "streaming_app"
    verbose_name = "Persistent text streams"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from . import checks  # noqa: F401  (registers the system checks)
        from .broadcast import listen_for_cancel, publish, request_cancel
        from .signals import stream_cancel_requested, stream_committed, stream_run_started

        # Every committed change goes to the stream's group on the channel layer, and a
        # cancel to the process driving the stream, wherever it runs.
        stream_committed.connect(publish, dispatch_uid="streaming_app.broadcast.publish")
        stream_cancel_requested.connect(request_cancel, dispatch_uid="streaming_app.cancel")
        stream_run_started.connect(listen_for_cancel, dispatch_uid="streaming_app.listen")
