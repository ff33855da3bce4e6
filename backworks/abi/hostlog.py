"""Where a plugin's `host->log` calls go: structlog events tagged with the plugin's name.

Called from whatever thread the plugin logs on (a pool thread, a worker's reader);
structlog's loggers are thread-safe, and a sink never raises into plugin code.
"""

from __future__ import annotations

import structlog

from backworks.abi.declarations import LOG_ERROR, LOG_INFO, LOG_WARN
from backworks.abi.values import LogSink


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
