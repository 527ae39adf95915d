"""The AI SDK's UI message stream (``useChat``): :mod:`.encoder` turns a stream's body
and parts into its chunks, :mod:`.views` drives and resumes streams in it."""

from __future__ import annotations

from .views import UIMessageEncoder, aresume_response, aui_message_stream_response

__all__ = ["UIMessageEncoder", "aresume_response", "aui_message_stream_response"]
