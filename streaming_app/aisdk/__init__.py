"""The AI SDK's UI message stream (``useChat``): :mod:`.encoder` turns a stream's body
and parts into its chunks, :mod:`.responses` drives and resumes streams in it. Imports
the core, the fan-out, and of ``http`` its drive and viewers; no other transport."""

from __future__ import annotations

from .encoder import UIMessageEncoder
from .responses import aresume_response, aui_message_stream_response

__all__ = ["UIMessageEncoder", "aresume_response", "aui_message_stream_response"]
