"""Compiles C sources into real shared libraries for the tests.

Builds are cached by the hash of the source and flags in one folder per test session,
so a plugin used by many tests is compiled once.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
INCLUDE = REPO / "sdk-c" / "include"
EXT = {"darwin": "dylib", "win32": "dll"}.get(sys.platform, "so")


def compile_library(
    source: str,
    out: Path,
    *,
    cache: Path,
    extra_flags: tuple[str, ...] = (),
) -> Path:
    """Compiles `source` (C text) into the shared library `out`; returns `out`."""
    cc = os.environ.get("CC", "cc")
    flags: tuple[str, ...] = ("-std=c99", "-O1", "-Wall", "-Werror", "-shared", "-fPIC")
    flags += (f"-I{INCLUDE}",)
    flags += extra_flags
    key = hashlib.sha256("\0".join((source, cc, *flags)).encode()).hexdigest()[:24]
    built = cache / f"{key}.{EXT}"
    if not built.exists():
        cache.mkdir(parents=True, exist_ok=True)
        src = cache / f"{key}.c"
        src.write_text(source)
        tmp = cache / f"{key}.tmp.{EXT}"
        subprocess.run([cc, *flags, "-o", str(tmp), str(src)], check=True)
        tmp.replace(built)
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(built, out)
    return out
