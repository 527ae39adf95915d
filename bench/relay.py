"""The floor of bench/viewers.py: a bare Channels consumer per viewer that joins the
stream's group and relays each group message to its socket, and does nothing else (no
gap filling, no status, no database): what this stack costs at the least."""

from __future__ import annotations

import json
from typing import Any

from channels.generic.websocket import AsyncWebsocketConsumer

from streaming_app.fanout.publish import group_name
from streaming_app.streams import parse_stream_id


class RelayConsumer(AsyncWebsocketConsumer):
    async def connect(self) -> None:
        await self.accept()
        self.group = group_name(parse_stream_id(self.scope["url_route"]["kwargs"]["stream_id"]))
        await self.channel_layer.group_add(self.group, self.channel_name)
        # Tell the benchmark it is in the group (the app's viewers get their status).
        await self.send(text_data='{"type":"status","status":"joined"}')

    async def stream_update(self, event: dict[str, Any]) -> None:
        message = {"type": "text", "offset": event["offset"], "text": event["text"]}
        await self.send(text_data=json.dumps(message, ensure_ascii=False))
        if event["status"] not in ("pending", "streaming"):
            await self.close(code=1000)

    async def disconnect(self, code: int) -> None:
        await self.channel_layer.group_discard(self.group, self.channel_name)
