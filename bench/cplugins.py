"""The bench's own C plugin (bench/plugins/work.c), compiled with the C SDK's headers.

Built twice from one source into a folder of the caller's: `spin` declares itself
thread-safe and non-blocking (so `dispatch: auto` calls it on the event loop), `block`
only thread-safe (a plugin that sleeps must not be called there).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
SOURCE = BENCH / "plugins" / "work.c"
INCLUDE = REPO / "sdk-c" / "include"
EXT = {"darwin": "dylib", "win32": "dll"}.get(sys.platform, "so")
FLAGS = {
    "spin": "BW_FLAG_THREAD_SAFE|BW_FLAG_NONBLOCKING",
    "block": "BW_FLAG_THREAD_SAFE",
}


def build_work_plugins(folder: Path) -> dict[str, Path]:
    """Compiles `spin` and `block` into `folder` (mode 0755 each); returns name -> path."""
    cc = os.environ.get("CC", "cc")
    built = {}
    for name, flags in FLAGS.items():
        out = folder / f"lib{name}.{EXT}"
        subprocess.run(
            [cc, "-std=c99", "-O2", "-Wall", "-Wextra", "-Werror", "-shared", "-fPIC",
             f"-I{INCLUDE}", f'-DWORK_NAME="{name}"', f"-DWORK_FLAGS=({flags})",
             "-o", str(out), str(SOURCE)],
            check=True,
        )  # fmt: skip
        out.chmod(0o755)
        built[name] = out
    return built
