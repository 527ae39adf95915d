"""Fan-out: publish → hub. Committed updates to this process's viewers at once and to
the others' through the channel layer; the hub, its feeds and viewers, and the typed
events they are handed. No transport and no wire format (docs/architecture.md)."""
