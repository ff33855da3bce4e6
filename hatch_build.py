"""The build hook that compiles the compiled step (backworks/abi/step.c) into the wheel.

hatchling runs it for `pip install -e .` (the extension is built in place, next to
step.c) and for `pip wheel .` (built in a scratch folder and put in the wheel, which
is then tagged for this interpreter and platform). Without a C compiler the build
goes on without the extension: the host then serves on its pure-Python path.
"""

from __future__ import annotations

import importlib.util
import tempfile
from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

ABI = Path("backworks") / "abi"


class CompiledStepHook(BuildHookInterface):  # type: ignore[type-arg]
    """Builds `backworks.abi._step` (see the module's doc)."""

    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        """Compiles the extension; the wheel carries it, or the tree has it in place."""
        if self.target_name != "wheel":
            return
        root = Path(self.root)
        spec = importlib.util.spec_from_file_location("step_build", root / ABI / "step_build.py")
        assert spec is not None
        assert spec.loader is not None
        step_build = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(step_build)  # cffi only: the package itself needs more
        editable = version == "editable"
        into = root / ABI if editable else Path(tempfile.mkdtemp(prefix="bw-step-wheel-"))
        try:
            made = step_build.build(into)
        except Exception as e:  # no compiler, no headers: the pure-Python path serves
            self.app.display_warning(
                f"backworks: the compiled step was not built ({e}); "
                "the host will serve on its pure-Python path"
            )
            return
        build_data["pure_python"] = False
        build_data["infer_tag"] = True
        if not editable:
            build_data["force_include"][str(made)] = str(ABI / made.name)
