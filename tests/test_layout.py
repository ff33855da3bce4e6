"""plugin.h, the cffi binding and ABI.md describe one layout: a C compiler is the judge.

The expected field lists below are copied from ABI.md's tables, in order, with the C
types the tables give: that page is the contract. A C program built against plugin.h
checks each field's type at compile time (C11 `_Generic`) and prints every size,
alignment, offset and constant, which must equal what cffi makes of the same header.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from backworks import abi
from backworks.abi import CONSTANTS, ffi, open_library
from tests.cbuild import EXT, INCLUDE, REPO

# ABI.md section 2, table by table: (field, C type).
STRUCTS: dict[str, list[tuple[str, str]]] = {
    "bw_str": [("ptr", "const char *"), ("len", "size_t")],
    "bw_header": [("name", "bw_str"), ("value", "bw_str")],
    "bw_host": [
        ("abi_version", "uint32_t"),
        ("struct_size", "uint32_t"),
        ("ctx", "void *"),
        ("log", "void (*)(void *, int32_t, const char *, size_t)"),
    ],
    "bw_request": [
        ("struct_size", "uint32_t"),
        ("method", "bw_str"),
        ("path", "bw_str"),
        ("query", "bw_str"),
        ("endpoint", "bw_str"),
        ("params", "const bw_header *"),
        ("params_len", "size_t"),
        ("headers", "const bw_header *"),
        ("headers_len", "size_t"),
        ("body", "const uint8_t *"),
        ("body_len", "size_t"),
        ("request_id", "bw_str"),
        ("timeout_ms", "uint32_t"),
        ("cancelled", "const volatile uint32_t *"),
    ],
    "bw_response": [
        ("struct_size", "uint32_t"),
        ("status", "int32_t"),
        ("content_type", "bw_str"),
        ("headers", "const bw_header *"),
        ("headers_len", "size_t"),
        ("body", "const uint8_t *"),
        ("body_len", "size_t"),
        ("release", "void (*)(void *)"),
        ("release_data", "void *"),
    ],
    "bw_plugin": [
        ("abi_version", "uint32_t"),
        ("struct_size", "uint32_t"),
        ("name", "const char *"),
        ("version", "const char *"),
        ("description", "const char *"),
        ("flags", "uint64_t"),
        ("init", "int32_t (*)(const bw_host *, const char *, size_t, void **, bw_response *)"),
        ("handle", "int32_t (*)(void *, const bw_request *, bw_response *)"),
        ("health", "int32_t (*)(void *, bw_response *)"),
        ("shutdown", "void (*)(void *)"),
        ("on_request", "int32_t (*)(void *, const bw_request *, bw_response *)"),
        (
            "on_response",
            "int32_t (*)(void *, const bw_request *, const bw_response *, bw_response *)",
        ),
    ],
}

# ABI.md sections 1 to 3.
EXPECTED_CONSTANTS = {
    "BW_ABI_VERSION_MAJOR": 1,
    "BW_ABI_VERSION_MINOR": 0,
    "BW_OK": 0,
    "BW_FAIL": 1,
    "BW_CANCELLED": 2,
    "BW_FLAG_THREAD_SAFE": 1 << 0,
    "BW_FLAG_NONBLOCKING": 1 << 1,
    "BW_LOG_DEBUG": 10,
    "BW_LOG_INFO": 20,
    "BW_LOG_WARN": 30,
    "BW_LOG_ERROR": 40,
}

CC = os.environ.get("CC", "cc")
CXX = os.environ.get("CXX", "c++")
WARNINGS = ("-Wall", "-Wextra", "-pedantic", "-Werror")
needs_cxx = pytest.mark.skipif(shutil.which(CXX) is None, reason=f"no C++ compiler ({CXX})")


def _layout_program() -> str:
    lines = [
        "#include <backworks/plugin.h>",
        "#include <stdio.h>",
        "#include <stddef.h>",
        "#define TYPE_IS(expr, type) _Generic((expr), type: 1, default: 0)",
    ]
    for struct, fields in STRUCTS.items():
        for field, ctype in fields:
            lines.append(
                f"_Static_assert(TYPE_IS((({struct} *)0)->{field}, {ctype}), "
                f'"{struct}.{field} is not {ctype} as ABI.md says");'
            )
    lines.append("int main(void) {")
    for struct, fields in STRUCTS.items():
        lines.append(
            f'    printf("struct {struct} %zu %zu\\n", sizeof({struct}), _Alignof({struct}));'
        )
        for field, _ in fields:
            lines.append(
                f'    printf("field {struct}.{field} %zu %zu\\n", offsetof({struct}, {field}), '
                f"sizeof((({struct} *)0)->{field}));"
            )
    for name in (*EXPECTED_CONSTANTS, "BW_ABI_VERSION"):
        lines.append(f'    printf("const {name} %llu\\n", (unsigned long long)({name}));')
    lines.append('    printf("entry %s\\n", BW_ENTRY_SYMBOL);')
    lines += ["    return 0;", "}"]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def c_view(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[str]]:
    """What a C compiler makes of plugin.h: `{"struct bw_str": ["16", "8"], ...}`."""
    folder = tmp_path_factory.mktemp("layout")
    source, program = folder / "layout.c", folder / "layout"
    source.write_text(_layout_program())
    subprocess.run(
        [CC, "-std=c11", *WARNINGS, f"-I{INCLUDE}", "-o", str(program), str(source)], check=True
    )
    output = subprocess.run([str(program)], check=True, capture_output=True, text=True).stdout
    view: dict[str, list[str]] = {}
    for line in output.splitlines():
        kind, name, *values = line.split(" ")
        view[f"{kind} {name}"] = values
    return view


@pytest.mark.parametrize("struct", STRUCTS)
def test_fields_are_named_and_ordered_as_abi_md_says(struct: str) -> None:
    assert [name for name, _ in ffi.typeof(struct).fields] == [f for f, _ in STRUCTS[struct]]


@pytest.mark.parametrize("struct", STRUCTS)
def test_cffi_and_the_c_compiler_agree_on_size_alignment_and_offsets(
    c_view: dict[str, list[str]], struct: str
) -> None:
    assert c_view[f"struct {struct}"] == [str(ffi.sizeof(struct)), str(ffi.alignof(struct))]
    for name, field in ffi.typeof(struct).fields:
        expected = [str(field.offset), str(ffi.sizeof(field.type))]
        assert c_view[f"field {struct}.{name}"] == expected, f"{struct}.{name}"
        assert ffi.offsetof(struct, name) == field.offset


def test_constants_match_abi_md_the_header_and_the_binding(c_view: dict[str, list[str]]) -> None:
    assert CONSTANTS == EXPECTED_CONSTANTS
    for name, value in EXPECTED_CONSTANTS.items():
        assert c_view[f"const {name}"] == [str(value)], name
    named = {
        "BW_OK": abi.BW_OK,
        "BW_FAIL": abi.BW_FAIL,
        "BW_CANCELLED": abi.BW_CANCELLED,
        "BW_FLAG_THREAD_SAFE": abi.FLAG_THREAD_SAFE,
        "BW_FLAG_NONBLOCKING": abi.FLAG_NONBLOCKING,
        "BW_LOG_DEBUG": abi.LOG_DEBUG,
        "BW_LOG_INFO": abi.LOG_INFO,
        "BW_LOG_WARN": abi.LOG_WARN,
        "BW_LOG_ERROR": abi.LOG_ERROR,
    }
    assert named == {name: EXPECTED_CONSTANTS[name] for name in named}


def test_abi_version_packs_major_and_minor(c_view: dict[str, list[str]]) -> None:
    assert c_view["const BW_ABI_VERSION"] == [str((1 << 16) | 0)]
    assert abi.ABI_VERSION == (1 << 16) | 0
    assert (abi.ABI_MAJOR, abi.ABI_MINOR) == (1, 0)
    assert abi.abi_text(abi.ABI_VERSION) == "1.0"


def test_the_entry_symbol_is_named_alike_everywhere(c_view: dict[str, list[str]]) -> None:
    assert c_view["entry backworks_plugin_entry"] == []
    assert abi.ENTRY_SYMBOL == "backworks_plugin_entry"
    assert "const bw_plugin *backworks_plugin_entry(uint32_t host_abi_version);" in (
        (INCLUDE / "backworks" / "plugin.h").read_text()
    )


# ---------------------------------------------------------------------------
# The headers compile cleanly for their users

HELLO = REPO / "sdk-c" / "examples" / "hello" / "hello.c"
PLUGIN_H_ONLY = """
#include <backworks/plugin.h>

static int32_t init(const bw_host *host, const char *config, size_t len, void **state,
                    bw_response *error) {
    (void)host; (void)config; (void)len; (void)error;
    *state = 0;
    return BW_OK;
}

static int32_t handle(void *state, const bw_request *req, bw_response *resp) {
    (void)state; (void)req;
    resp->status = 204;
    return BW_OK;
}

static const bw_plugin descriptor = {BW_ABI_VERSION, sizeof(bw_plugin), "bare", "1.0.0",
                                     "plugin.h only", 0, init, handle, 0, 0, 0, 0};

#ifdef __cplusplus
extern "C"
#endif
BW_EXPORT const bw_plugin *backworks_plugin_entry(uint32_t host_abi_version) {
    return (host_abi_version >> 16) == BW_ABI_VERSION_MAJOR ? &descriptor : 0;
}
"""


def _compile(args: list[str], source: str | Path, tmp_path: Path, suffix: str) -> None:
    if isinstance(source, str):
        path = tmp_path / f"unit{suffix}"
        path.write_text(source)
        source = path
    result = subprocess.run(
        [*args, *WARNINGS, f"-I{INCLUDE}", str(source)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


SDK_H_ONLY = "#include <backworks/sdk.h>\nint main(void) { return 0; }\n"


@pytest.mark.parametrize("std", ["c89", "c99", "c11"])
def test_plugin_h_compiles_as_strict_c(tmp_path: Path, std: str) -> None:
    _compile([CC, f"-std={std}", "-fsyntax-only"], PLUGIN_H_ONLY, tmp_path, ".c")


def test_sdk_h_and_the_hello_example_compile_as_strict_c99(tmp_path: Path) -> None:
    _compile([CC, "-std=c99", "-fsyntax-only"], HELLO, tmp_path, ".c")


@needs_cxx
@pytest.mark.parametrize("std", ["c++11", "c++17"])
def test_plugin_h_and_sdk_h_compile_as_strict_cxx(tmp_path: Path, std: str) -> None:
    _compile([CXX, f"-std={std}", "-fsyntax-only", "-x", "c++"], PLUGIN_H_ONLY, tmp_path, ".cc")
    _compile(
        [CXX, f"-std={std}", "-fsyntax-only", "-x", "c++"],
        SDK_H_ONLY,
        tmp_path,
        ".cc",
    )


@needs_cxx
def test_the_hello_example_builds_as_cxx20_and_loads(tmp_path: Path) -> None:
    """BW_DEFINE_PLUGIN in C++20: no warnings, and the entry keeps C linkage."""
    out = tmp_path / f"libhello.{EXT}"
    args = [CXX, "-std=c++20", "-x", "c++", "-shared", "-fPIC", "-o", str(out)]
    _compile(args, HELLO, tmp_path, ".cc")
    assert open_library(out).info.name == "hello"
