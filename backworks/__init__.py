"""Backworks: turn compiled plugins into HTTP APIs through a stable, versioned C ABI."""

__all__: list[str] = []
