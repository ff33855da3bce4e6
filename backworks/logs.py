"""Structured logging: JSON lines in production, readable columns on a terminal.

What plugins log through `host->log` arrives here as ordinary structlog events
(abi/hostlog.py), so one configuration covers the host and its plugins.
"""

from __future__ import annotations

import logging
import sys
from typing import Literal

import structlog

Format = Literal["auto", "console", "json"]
LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


# Where a credential travels in HTTP: never written to a log line, whoever logs it.
SENSITIVE = frozenset(
    {"authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key", "token"}
)
REDACTED = "[redacted]"


def redact(_: object, __: str, event: structlog.typing.EventDict) -> structlog.typing.EventDict:
    """A structlog processor: a sensitive key's value, or a sensitive header in a list or
    mapping of headers, is replaced by REDACTED before anything renders the event."""
    for key, value in event.items():
        if key.lower().replace("_", "-") in SENSITIVE:
            event[key] = REDACTED
        elif key in ("headers", "header") and value:
            event[key] = _redacted_headers(value)
    return event


def _redacted_headers(value: object) -> object:
    if isinstance(value, dict):
        return {k: REDACTED if str(k).lower() in SENSITIVE else v for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [
            (pair[0], REDACTED)
            if isinstance(pair, list | tuple)
            and len(pair) == 2
            and str(pair[0]).lower() in SENSITIVE
            else pair
            for pair in value
        ]
    return value


def configure_logging(level: str = "info", fmt: Format = "auto") -> None:
    """Sets up structlog for the process; `auto` means console on a TTY, JSON otherwise.

    Tracebacks are rendered plainly (no local variables: they may hold request
    headers), and sensitive keys are redacted (`redact`).
    """
    console = fmt == "console" or (fmt == "auto" and sys.stderr.isatty())
    renderer: structlog.typing.Processor = (
        structlog.dev.ConsoleRenderer(
            colors=sys.stderr.isatty(), exception_formatter=structlog.dev.plain_traceback
        )
        if console
        else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            redact,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS.get(level, logging.INFO)),
        # One write per line (print writes the newline separately): the workers of
        # `--workers N` share stderr, and their lines must not interleave.
        logger_factory=structlog.WriteLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
