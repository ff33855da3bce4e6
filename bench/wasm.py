"""The Extism row's wasm module: bench/wasm/hello.wat compiled by wasmtime's wat2wasm.

The module is written in WAT against the Extism kernel ABI, so no wasm toolchain (and
no crate download) is needed; wasmtime, in the `bench` extra, turns the text into
the binary Extism loads.
"""

from __future__ import annotations

from pathlib import Path

HELLO_WAT = Path(__file__).resolve().parent / "wasm" / "hello.wat"


def hello_wasm() -> bytes:
    """The hello module as wasm bytes."""
    import wasmtime

    return bytes(wasmtime.wat2wasm(HELLO_WAT.read_text()))


def write_hello_wasm(folder: Path) -> Path:
    """Writes the hello module into `folder` as hello.wasm; returns its path."""
    out = folder / "hello.wasm"
    out.write_bytes(hello_wasm())
    return out
