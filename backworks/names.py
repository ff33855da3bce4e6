"""The small facts that several layers agree on, each said once.

- the plugin-name rule (ABI and config alike),
- the HTTP methods an endpoint may take,
- the `dispatch` and `isolation` choices of a plugin's config.
"""

from __future__ import annotations

import re
from typing import Literal, get_args

PLUGIN_NAME_RULE = "[a-z0-9][a-z0-9_-]{0,63}"
_PLUGIN_NAME = re.compile(PLUGIN_NAME_RULE)

HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
ALL_METHODS = frozenset(HTTP_METHODS)

Dispatch = Literal["auto", "pool", "inline"]
Isolation = Literal["in-process", "process"]
DISPATCHES: tuple[Dispatch, ...] = get_args(Dispatch)
ISOLATIONS: tuple[Isolation, ...] = get_args(Isolation)


def is_plugin_name(name: object) -> bool:
    """Whether `name` may name a plugin: PLUGIN_NAME_RULE, at most 64 characters."""
    return isinstance(name, str) and _PLUGIN_NAME.fullmatch(name) is not None


def invalid_name_reason(name: str) -> str | None:
    """Why `name` cannot be a plugin name, or None when it can (ABI and legacy alike)."""
    if is_plugin_name(name):
        return None
    return f"plugin name {name!r} is invalid: expected {PLUGIN_NAME_RULE}"
