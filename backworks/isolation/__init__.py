"""Process isolation: a plugin's calls run in worker processes (`isolation: process`).

`framing` is the wire codec, `worker` the child's main, `process` one worker process
as the host holds it, `backend` the `ProcessBackend` the runner drives.

The names below are imported on first use, so a worker process (which imports this
package on its way to `backworks.isolation.worker`) does not pay for the host side.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from backworks.isolation.backend import ProcessBackend, probe

__all__ = ["ProcessBackend", "probe"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from backworks.isolation import backend

        return getattr(backend, name)
    msg = f"module {__name__!r} has no attribute {name!r}"
    raise AttributeError(msg)
