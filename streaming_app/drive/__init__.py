"""Driving a stream: source → run → flush → persist. The run and its writer, the
flush policy, the committer and the SQL of a flush. No HTTP, no websockets; of the
fan-out, only ``publish`` (docs/architecture.md)."""
