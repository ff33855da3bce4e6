"""Structured logging: JSON lines in production, readable columns on a terminal.

What plugins log through `host->log` arrives here as ordinary structlog events
(abi/hostlog.py), so one configuration covers the host and its plugins. What the
libraries underneath log through the standard `logging` module (aiohttp, asyncio,
gunicorn) and Python's warnings pass through the same renderer: in JSON mode the
stream is one JSON object per line, always. Traces have a stream of their own
(tracing.py), never this one.
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
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        redact,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    _route_standard_logging(shared, renderer, LEVELS.get(level, logging.INFO))
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS.get(level, logging.INFO)),
        # One write per line (print writes the newline separately): the workers of
        # `--workers N` share stderr, and their lines must not interleave.
        logger_factory=structlog.WriteLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )


def _route_standard_logging(
    shared: list[structlog.typing.Processor], renderer: structlog.typing.Processor, level: int
) -> None:
    """The standard library's records rendered as structlog's lines, on the same stream.

    Without it a library's record (aiohttp's "Error handling request", a gunicorn
    warning) or a Python warning reached stderr as plain, often multi-line, text in
    the middle of the JSON stream. The record's logger name is kept as `logger`.
    """
    handler = logging.StreamHandler(sys.stderr)  # one write per record, newline included
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _OURS, False)]:
        root.removeHandler(old)
    setattr(handler, _OURS, True)
    root.addHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(True)


_OURS = "_backworks_handler"  # marks the handler a second configure_logging replaces
