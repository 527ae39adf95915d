"""HTTP: the driving response, a stream's body and cancel, Server-Sent Events, and the
JSON answers of every view. Imports the core, the fan-out and ``protocol``; no other
transport (docs/architecture.md)."""
