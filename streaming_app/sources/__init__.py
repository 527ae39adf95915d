"""Adapters from model SDKs to a stream's source (an async iterable of text pieces)."""
