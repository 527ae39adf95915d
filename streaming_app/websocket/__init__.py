"""The websocket transport: the consumer a viewer follows a stream on. Imports the
core, the fan-out and ``protocol``; no other transport (docs/architecture.md)."""
