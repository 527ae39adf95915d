"""The Durable Streams protocol (github.com/durable-streams/durable-streams,
PROTOCOL.md 1.0) over the app's streams: a transport, like the websocket and SSE."""
