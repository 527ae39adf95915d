from __future__ import annotations

import json
from typing import Any

from django.contrib import admin, messages
from django.contrib.auth import get_permission_codename
from django.db.models import Count, QuerySet
from django.http import HttpRequest
from django.utils.html import format_html, format_html_join

from .models import Stream
from .parts import assemble
from .streams import cancel_stream, compact_stream, read_text

# The body page shows at most this much text, so that a huge stream cannot stall it.
BODY_PREVIEW_CHARS = 100_000
PRE = '<pre style="white-space: pre-wrap; max-width: 80em">{}{}</pre>'


def _label(part: dict[str, Any]) -> str:
    if part["type"] == "tool-call":
        return f"tool call {part['name'] or '?'} ({part['id']})"
    if part["type"] == "finish":
        return f"finish: {part['reason']}"
    return str(part["type"])


def _content(part: dict[str, Any]) -> str:
    if part["type"] == "tool-call":
        result = json.dumps(part["result"], ensure_ascii=False) if "result" in part else "…"
        return f"{part['arguments']}\n→ {result}"
    if part["type"] == "finish":
        return json.dumps(part["usage"], ensure_ascii=False)
    return str(part["text"])


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
        text = read_text(stream.id, 0, min(stream.length, BODY_PREVIEW_CHARS))
        more = stream.length - len(text)
        suffix = f"\n… and {more} more characters" if more > 0 else ""
        if not stream.parts:
            return format_html(PRE, text, suffix)
        # A stream with parts: each part under its kind.
        rows = ((_label(part), _content(part)) for part in assemble(text, stream.parts))
        return format_html(
            "{}{}",
            format_html_join("", "<p><strong>{}</strong></p>" + PRE.format("{}", ""), rows),
            format_html("<p>{}</p>", suffix.strip()) if suffix else "",
        )

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
