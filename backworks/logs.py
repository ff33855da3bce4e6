"""Structured logging: JSON lines in production, readable columns on a terminal.

Plugins log through `host->log`; `plugin_log_sink` turns those calls into ordinary
structlog events tagged with the plugin's name, from whatever thread they come.
"""

from __future__ import annotations

import logging
import sys
from typing import Literal

import structlog

from backworks.abi import LOG_ERROR, LOG_INFO, LOG_WARN, LogSink

Format = Literal["auto", "console", "json"]
LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def configure_logging(level: str = "info", fmt: Format = "auto") -> None:
    """Sets up structlog for the process; `auto` means console on a TTY, JSON otherwise."""
    console = fmt == "console" or (fmt == "auto" and sys.stderr.isatty())
    renderer: structlog.typing.Processor = (
        structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
        if console
        else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS.get(level, logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )


def plugin_log_sink(plugin: str, **context: object) -> LogSink:
    """A sink for one plugin's `host->log` calls (thread-safe, never raises)."""
    logger = structlog.get_logger("backworks.plugin").bind(plugin=plugin, **context)

    def sink(level: int, message: str) -> None:
        if level >= LOG_ERROR:
            logger.error("plugin_log", message=message)
        elif level >= LOG_WARN:
            logger.warning("plugin_log", message=message)
        elif level >= LOG_INFO:
            logger.info("plugin_log", message=message)
        else:
            logger.debug("plugin_log", message=message)

    return sink
