"""How Backworks starts Python children of its own (the scanner, plugin workers).

Both run `python -P -m backworks.<module>` with this package importable:

- `-P`: the current folder is not put on `sys.path`, so a stray `./backworks` (or
  any module a plugin folder holds) cannot stand in for the real package;
- PYTHONPATH starts with the folder this package was imported from, so a checkout
  that was never installed works the same as an installed package.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

import backworks


def package_root() -> str:
    """The folder that holds the `backworks` package this process imported."""
    return str(Path(backworks.__file__).resolve().parent.parent)


def python_child(
    module: str, *args: str, env: Mapping[str, str] | None = None
) -> tuple[list[str], dict[str, str]]:
    """The command line and environment that run `module` of this package in a child.

    `env` is added on top of this process's environment.
    """
    child_env = dict(os.environ)
    child_env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [package_root(), child_env.get("PYTHONPATH")])
    )
    child_env.update(env or {})
    return [sys.executable, "-P", "-m", module, *args], child_env
