"""The HTML of a stream's parts: what ``<stream-text>`` shows, and what the admin shows.

One module for both, so that a part's markup is written once on the server.
:func:`parts_html` is the element's (the template tag renders it inside the element;
``stream-text.js`` builds the same blocks in the browser, and
``tests/test_markup.py`` checks that the two DOMs are equal): reasoning and tool calls
folded in ``<details>``, text as text, the finish not shown. :func:`preview_html` is the
admin's, which shows what a part holds rather than what a reader sees: each part under
its kind (a tool call's id, a finish's reason), a tool call's result and a finish's
usage as raw JSON, the text cut where the admin's preview ends.

Everything a stream holds is text here: it is escaped, never markup.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from .parts import FINISH, REASONING, TEXT, TOOL_CALL, Entry, assemble

# The element's ----------------------------------------------------------------------------


def result_text(result: Any) -> str:
    """A tool's result as the page shows it: a string as it is, anything else as JSON
    (as ``JSON.stringify(result, null, 2)`` shows it in the browser)."""
    if isinstance(result, str):
        return result
    return json.dumps(result, ensure_ascii=False, indent=2)


def part_html(part: dict[str, Any], number: int) -> SafeString:
    """The block of part number ``number`` (a part as ``assemble()`` gives it) in the
    element's body; nothing for a finish."""
    if part["type"] == REASONING:
        return format_html(
            '<details class="stream-reasoning" data-part="{}"><summary>Reasoning</summary>'
            '<div class="stream-reasoning-text">{}</div></details>',
            number,
            part["text"],
        )
    if part["type"] == TOOL_CALL:
        result = (
            format_html(
                '<div class="stream-tool-label">Result</div>'
                '<div class="stream-tool-result">{}</div>',
                result_text(part["result"]),
            )
            if "result" in part
            else ""
        )
        return format_html(
            '<details class="stream-tool-call" data-part="{}"><summary>Tool '
            '<code class="stream-tool-name">{}</code></summary>'
            '<div class="stream-tool-label">Arguments</div>'
            '<div class="stream-tool-arguments">{}</div>{}</details>',
            number,
            part["name"],
            part["arguments"],
            result,
        )
    if part["type"] == TEXT:
        return format_html(
            '<div class="stream-text-part" data-part="{}">{}</div>', number, part["text"]
        )
    return SafeString("")


def parts_html(parts: Iterable[dict[str, Any]]) -> SafeString:
    """The blocks of ``parts``, in order, numbered as the element numbers them."""
    return SafeString("".join(part_html(part, number) for number, part in enumerate(parts)))


# The admin's --------------------------------------------------------------------------------

PRE = '<pre style="white-space: pre-wrap; max-width: 80em">{}{}</pre>'


def inspected_label(part: dict[str, Any]) -> str:
    """What the admin titles a part with: its kind, a tool call's name and id, a
    finish's reason."""
    if part["type"] == TOOL_CALL:
        return f"tool call {part['name'] or '?'} ({part['id']})"
    if part["type"] == FINISH:
        return f"finish: {part['reason']}"
    return str(part["type"])


def inspected_content(part: dict[str, Any]) -> str:
    """What the admin shows of a part: its text; a tool call's arguments and its result
    as JSON ("…" while there is none); a finish's usage as JSON."""
    if part["type"] == TOOL_CALL:
        result = json.dumps(part["result"], ensure_ascii=False) if "result" in part else "…"
        return f"{part['arguments']}\n→ {result}"
    if part["type"] == FINISH:
        return json.dumps(part["usage"], ensure_ascii=False)
    return str(part["text"])


def preview_html(text: str, entries: Sequence[Entry], more: int) -> SafeString:
    """The admin's body of a stream: ``text`` (its first characters, ``more`` left
    out) as one block for a plain stream, else part by part under each part's label."""
    suffix = f"\n… and {more} more characters" if more > 0 else ""
    if not entries:
        return format_html(PRE, text, suffix)
    rows = ((inspected_label(part), inspected_content(part)) for part in assemble(text, entries))
    return format_html(
        "{}{}",
        format_html_join("", "<p><strong>{}</strong></p>" + PRE.format("{}", ""), rows),
        format_html("<p>{}</p>", suffix.strip()) if suffix else "",
    )
