from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.contrib.auth import get_permission_codename
from django.db.models import Count, QuerySet
from django.http import HttpRequest

from .models import Stream
from .render import preview_html
from .streams import cancel_stream, compact_stream, read_text

# The body page shows at most this much text, so that a huge stream cannot stall it.
BODY_PREVIEW_CHARS = 100_000


@admin.register(Stream)
class StreamAdmin(admin.ModelAdmin):
    list_display = ["id", "status", "length", "chunk_count", "owner", "created_at", "updated_at"]
    list_filter = ["status", "created_at"]
    search_fields = ["id"]
    date_hierarchy = "created_at"
    # Streams are inspected, never edited: a save would write the whole row as it was
    # loaded, under a live writer (has_change_permission). Deleting a live stream stops
    # its run first, wherever it is (StreamQuerySet.delete).
    readonly_fields = (
        "id",
        "status",
        "owner",
        "length",
        "chunk_count",
        "error",
        "metadata",
        "created_at",
        "updated_at",
        "finished_at",
        "body",
    )
    fields = readonly_fields
    actions = ["cancel", "compact"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Stream]:
        return super().get_queryset(request).annotate(chunk_total=Count("chunks"))

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Stream | None = None) -> bool:
        return False

    @admin.display(description="chunks", ordering="chunk_total")
    def chunk_count(self, stream: Any) -> int:
        return int(getattr(stream, "chunk_total", None) or stream.chunks.count())

    @admin.display(description="body")
    def body(self, stream: Stream) -> str:
        """The stream's text (its first BODY_PREVIEW_CHARS), part by part (render.py)."""
        text = read_text(stream.id, 0, min(stream.length, BODY_PREVIEW_CHARS))
        return preview_html(text, stream.parts, stream.length - len(text))

    @admin.action(description="Cancel the selected live streams", permissions=["delete"])
    def cancel(self, request: HttpRequest, queryset: QuerySet[Stream]) -> None:
        live = queryset.live().values_list("pk", flat=True)  # type: ignore[attr-defined]
        statuses = [cancel_stream(pk) for pk in live]
        self.message_user(
            request,
            f"{len(statuses)} live stream{'' if len(statuses) == 1 else 's'} asked to stop; "
            "each keeps what it has written and ends cancelled.",
            messages.SUCCESS,
        )

    def has_compact_permission(self, request: HttpRequest) -> bool:
        """Compacting rewrites a stream's chunks: the change permission's, which
        has_change_permission cannot answer (it is False for everyone: no change form)."""
        codename = get_permission_codename("change", self.opts)
        return bool(request.user.has_perm(f"{self.opts.app_label}.{codename}"))

    @admin.action(
        description="Merge the chunks of the selected finished streams", permissions=["compact"]
    )
    def compact(self, request: HttpRequest, queryset: QuerySet[Stream]) -> None:
        compacted = sum(1 for pk in queryset.values_list("pk", flat=True) if compact_stream(pk))
        self.message_user(
            request,
            f"{compacted} stream{'' if compacted == 1 else 's'} compacted; "
            "live streams and streams of one chunk were left as they were.",
            messages.SUCCESS,
        )
