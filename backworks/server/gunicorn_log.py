"""gunicorn's own log lines (`--workers N`) in Backworks' log stream, as JSON like the rest.

gunicorn writes its error log through handlers of its own, as plain text; this logger
keeps its levels and names but hands its records to the root logger, which logs.py
renders like every other line.
"""

from __future__ import annotations

import logging
from typing import Any

from gunicorn.glogging import Logger


class StructuredLogger(Logger):  # type: ignore[misc]  # gunicorn is untyped
    """gunicorn's Logger without handlers of its own: its records go to the root logger."""

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        for log in (self.error_log, self.access_log):
            for handler in list(log.handlers):
                log.removeHandler(handler)
            log.propagate = True
        logging.getLogger("gunicorn").propagate = True
