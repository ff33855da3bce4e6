"""Builds the compiled step (step.c) as the extension `backworks.abi._step` (cffi API mode).

Run by the project's build (hatch_build.py) for `pip install -e .` and `pip wheel .`;
`python backworks/abi/step_build.py` builds it in place by hand. Only what Python
calls is declared here; the plugin ABI's types come from the SDK header itself.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent
MODULE = "backworks.abi._step"

CDEF = """
typedef struct bws_plugin {
    const void *desc;
    void *state;
    const volatile uint32_t *cancelled;
    const int64_t *gate;
    const int64_t *calm;
    uint64_t limit;
    double budget;
    double last;
    uint64_t total;
    uint64_t calls;
    uint64_t buckets[32];
    double sum;
    double samples[2048];
    uint32_t cursor;
    uint32_t filled;
} bws_plugin;
#define BWS_NOT_CALLED -1
#define BWS_LEFT -2
#define BWS_OVERRAN 1024
#define BWS_LENGTH_SHIFT 11
void bws_set_reason(int status, const char *text, size_t len);
int bws_set_bounds(const double *bounds, size_t n);
int32_t bws_last_rc(void);
int64_t bws_step(void *plugin, const char *texts, size_t texts_len, size_t n_params,
                 size_t n_headers, const char *body, size_t body_len, uint32_t timeout_ms,
                 const char *date, const char *global_block, const char *connection,
                 int head_only, void *response, char *out, size_t cap);
"""


def include_dir() -> Path:
    """The SDK's headers: inside the package when installed, else the checkout's."""
    packaged = HERE.parent / "include"
    if (packaged / "backworks" / "plugin.h").is_file():
        return packaged
    return HERE.parent.parent / "sdk-c" / "include"


def builder() -> FFI:
    """The cffi builder of the extension."""
    ffibuilder = FFI()
    ffibuilder.cdef(CDEF)
    ffibuilder.set_source(
        MODULE,
        (HERE / "step.c").read_text(encoding="utf-8"),
        include_dirs=[str(include_dir())],
        extra_compile_args=["-O2", "-std=gnu99", "-Wall", "-Wextra", "-Wno-unused-parameter"],
    )
    return ffibuilder


def build(into: Path) -> Path:
    """Compiles the extension into the folder `into`; returns the file made.

    Compiled in a scratch folder of its own: cffi runs setuptools there, which must
    not read the project's pyproject.toml.
    """
    with tempfile.TemporaryDirectory(prefix="bw-step-") as scratch:
        made = Path(builder().compile(tmpdir=scratch))
        into.mkdir(parents=True, exist_ok=True)
        target = into / made.name
        shutil.copyfile(made, target)
    return target


if __name__ == "__main__":
    print(build(HERE))
