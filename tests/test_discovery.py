"""Discovery against real libraries compiled into tmp_path: good plugins, malformed
descriptors, constructors that abort, segfault, exit or hang, and files that are not
plugins at all. Hostile files share one folder and one scan, which is what a plugin
folder looks like when something goes wrong, and keeps this file fast."""

from __future__ import annotations

import json
import os
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from structlog.testing import capture_logs

from backworks.abi import include_dir
from backworks.plugins import discovery
from backworks.plugins.discovery import NOT_A_LIBRARY, NOT_A_PLUGIN, ScanResult
from tests.cbuild import EXT, compile_library
from tests.conftest import BuildPlugin


def good_source(name: str = "good", version: str = "1.2.3", prelude: str = "") -> str:
    """A well-formed plugin written the way the SDK documents it."""
    return f"""
#include <backworks/sdk.h>
{prelude}
static int32_t handle(void *state, const bw_request *req, bw_response *resp) {{
    (void)state; (void)req;
    return bw_respond_json(resp, 200, "{{}}");
}}
BW_DEFINE_PLUGIN(.name = {json.dumps(name)}, .version = {json.dumps(version)},
                 .description = "A plugin for tests", .flags = BW_FLAG_THREAD_SAFE,
                 .init = bw_init_stateless, .handle = handle)
"""


def raw_source(
    *,
    name: str = "raw",
    abi: str = "BW_ABI_VERSION",
    struct_size: str = "sizeof(bw_plugin)",
    handle: str = "handle",
    returns: str = "&descriptor",
    constructor: str = "",
) -> str:
    """A hand-written descriptor and entry point, to get each field wrong on purpose;
    `constructor` is C run when the library is loaded."""
    return f"""
#define _POSIX_C_SOURCE 200809L
#include <backworks/sdk.h>
#include <signal.h>
#include <unistd.h>

__attribute__((constructor)) static void on_load(void) {{ {constructor} }}

__attribute__((unused))
static int32_t handle(void *state, const bw_request *req, bw_response *resp) {{
    (void)state; (void)req;
    return bw_respond_json(resp, 200, "{{}}");
}}
__attribute__((unused)) static const bw_plugin descriptor = {{
    .abi_version = {abi}, .struct_size = {struct_size}, .name = {json.dumps(name)},
    .version = "1.0.0", .description = "", .init = bw_init_stateless, .handle = {handle}}};

BW_EXPORT const bw_plugin *backworks_plugin_entry(uint32_t host_abi_version) {{
    (void)host_abi_version;
    return {returns};
}}
"""


ABORT = 'fputs("dying words\\n", stderr); abort();'
SEGFAULT = "volatile int *volatile p = NULL; *p = 1;"
HANG = "for (;;) pause();"

# Deliberately: a library with no entry symbol whose constructor would crash the
# scanner if anything loaded it.
NO_ENTRY = f"""
#include <stdio.h>
#include <stdlib.h>
__attribute__((constructor)) static void on_load(void) {{ {ABORT} }}
int not_a_plugin(void) {{ return 42; }}
"""

HOSTILE = {
    "good": good_source("good"),
    "other": good_source("other", "0.1.0"),
    "abort": raw_source(constructor=ABORT),
    "segv": raw_source(constructor=SEGFAULT),
    "hang": raw_source(constructor=HANG),
    "exit": raw_source(constructor="_exit(3);"),
    "null": raw_source(returns="NULL"),
    "major2": raw_source(abi="(2u << 16)"),
    "small": raw_source(struct_size="8"),
    "nohandle": raw_source(handle="NULL"),
    "badname": raw_source(name="Bad Name"),
    "noentry": NO_ENTRY,
    "writable": raw_source(constructor=ABORT),
}


def build(source: str, path: Path, cache: Path) -> Path:
    compile_library(source, path, cache=cache)
    path.chmod(0o644)  # whatever the umask: group/world-writable files are refused
    return path


@pytest.fixture(autouse=True)
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv("BACKWORKS_CACHE_DIR", str(folder))
    return folder


class Scanned(NamedTuple):
    results: dict[str, ScanResult]  # by file name
    logs: list[MutableMapping[str, Any]]

    def error(self, file: str) -> str:
        error = self.results[file].error
        assert error is not None, f"{file} has no error"
        return error


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory, build_cache: Path) -> Scanned:
    """One scan of a folder holding every kind of bad file beside two good plugins."""
    folder = tmp_path_factory.mktemp("hostile")
    for name, source in HOSTILE.items():
        build(source, folder / f"lib{name}.{EXT}", build_cache)
    (folder / f"libwritable.{EXT}").chmod(0o666)
    (folder / f"text.{EXT}").write_text("INPUT(-lc)\n")  # a linker script, like libc.so
    (folder / f"broken.{EXT}").symlink_to(folder / "nowhere")
    (folder / f"zz-alias.{EXT}").symlink_to(folder / f"libgood.{EXT}")
    os.mkfifo(folder / f"fifo.{EXT}")
    (folder / f"subfolder.{EXT}").mkdir()
    (folder / "README.txt").write_text("not a library name")
    with capture_logs() as logs:
        results = discovery.scan(
            [folder], timeout_s=1, cache_dir=tmp_path_factory.mktemp("hostile-cache")
        )
    return Scanned({Path(r.path).name: r for r in results}, logs)


def lib(name: str) -> str:
    return f"lib{name}.{EXT}"


# -- the hostile folder -----------------------------------------------------------


def test_good_plugins_are_found_beside_hostile_files(hostile: Scanned) -> None:
    results = hostile.results
    good = results[lib("good")]
    assert good.ok
    assert good.to_json() == {
        "path": good.path,
        "ok": True,
        "name": "good",
        "version": "1.2.3",
        "description": "A plugin for tests",
        "abi": "1.0",
        "flags": ["thread_safe"],
        "error": None,
    }
    assert results[lib("other")].ok
    assert results[lib("other")].version == "0.1.0"
    assert [r.name for r in results.values() if r.ok] == ["good", "other"]


def test_every_library_named_file_gets_one_result_and_nothing_else(hostile: Scanned) -> None:
    names = set(hostile.results)
    expected = {lib(n) for n in HOSTILE} | {f"{n}.{EXT}" for n in ("text", "broken", "zz-alias")}
    assert names == expected | {f"fifo.{EXT}"}


def test_a_constructor_that_aborts_is_blamed_with_sigabrt_and_its_stderr(hostile: Scanned) -> None:
    result = hostile.results[lib("abort")]
    assert not result.ok
    assert result.error == "crashed with SIGABRT while loading (stderr: dying words)"


def test_a_constructor_that_segfaults_is_blamed_with_sigsegv(hostile: Scanned) -> None:
    assert hostile.error(lib("segv")) == "crashed with SIGSEGV while loading"


def test_a_constructor_that_hangs_is_killed_after_the_time_limit(hostile: Scanned) -> None:
    assert hostile.error(lib("hang")) == "timed out after 1 s while loading"


def test_a_constructor_that_exits_is_blamed_with_its_status(hostile: Scanned) -> None:
    assert hostile.error(lib("exit")) == "exited with status 3 while loading"


def test_an_entry_returning_null_declines_the_host_and_says_how_to_rebuild(
    hostile: Scanned,
) -> None:
    error = hostile.error(lib("null"))
    assert error.startswith("plugin declined host ABI 1.0: it was built against another major")
    assert f"rebuild it against this host's SDK: C with `-I {include_dir()}`" in error
    assert (include_dir() / "backworks" / "plugin.h").is_file(), "the hint names real headers"


def test_a_descriptor_of_another_major_abi_is_refused_naming_both(hostile: Scanned) -> None:
    error = hostile.error(lib("major2"))
    assert "built against plugin ABI 2.0, but this host speaks ABI 1.0" in error


def test_a_descriptor_smaller_than_abi_1_0_is_refused(hostile: Scanned) -> None:
    assert "descriptor struct_size is 8 bytes" in hostile.error(lib("small"))


def test_a_descriptor_without_handle_is_refused(hostile: Scanned) -> None:
    error = hostile.error(lib("nohandle"))
    assert error == "descriptor has no 'handle' function (it is required)"


def test_an_invalid_plugin_name_is_refused(hostile: Scanned) -> None:
    assert "plugin name 'Bad Name' is invalid" in hostile.error(lib("badname"))


def test_a_library_without_the_entry_symbol_is_skipped_never_loaded(hostile: Scanned) -> None:
    # Its constructor aborts: had it been loaded, the error would say SIGABRT.
    result = hostile.results[lib("noentry")]
    assert (result.ok, result.skipped, result.error) == (False, True, NOT_A_PLUGIN)
    expected = "not a Backworks plugin (no backworks_plugin_entry or plugin_info symbol)"
    assert result.error == expected


def test_a_world_writable_plugin_is_refused_before_loading(hostile: Scanned) -> None:
    assert not hostile.results[lib("writable")].skipped
    assert hostile.error(lib("writable")).startswith("refused: the file is writable by anyone")


def test_a_plain_file_with_a_library_suffix_is_skipped(hostile: Scanned) -> None:
    result = hostile.results[f"text.{EXT}"]
    assert (result.skipped, result.error) == (True, NOT_A_LIBRARY)


def test_broken_links_and_special_files_are_skipped(hostile: Scanned) -> None:
    results = hostile.results
    assert results[f"broken.{EXT}"].error == "broken symbolic link"
    assert results[f"fifo.{EXT}"].error == "not a regular file"
    assert results[f"broken.{EXT}"].skipped
    assert results[f"fifo.{EXT}"].skipped


def test_a_second_name_of_one_file_is_not_examined_twice(hostile: Scanned) -> None:
    result = hostile.results[f"zz-alias.{EXT}"]
    assert result.skipped
    assert result.error == f"another name of {hostile.results[lib('good')].path}"


def test_the_scan_logs_how_many_files_it_loaded(hostile: Scanned) -> None:
    done = [e for e in hostile.logs if e["event"] == "plugin_scan_done"]
    assert len(done) == 1
    # Every library with the entry symbol and safe permissions, and nothing else.
    assert done[0]["loaded"] == len(HOSTILE) - 2
    assert done[0]["files"] == 17
    assert done[0]["usable"] == 2
    assert done[0]["cached"] == 0


# -- names, permissions, folders ----------------------------------------------------


def test_two_files_declaring_one_name_are_both_refused(
    tmp_path: Path, build_plugin: BuildPlugin
) -> None:
    first = build_plugin(good_source("twin"), "twin", tmp_path / "a")
    second = build_plugin(good_source("twin", "2.0.0"), "twin", tmp_path / "b")
    results = discovery.scan([tmp_path / "a", tmp_path / "b"])
    assert [(r.ok, r.name) for r in results] == [(False, "twin"), (False, "twin")]
    assert results[0].error == f"plugin name 'twin' is also declared by {second}"
    assert results[1].error == f"plugin name 'twin' is also declared by {first}"


def test_a_group_writable_plugin_is_usable_only_when_allowed(
    tmp_path: Path, build_plugin: BuildPlugin
) -> None:
    path = build_plugin(good_source(), "good", tmp_path / "plugins")
    path.chmod(0o664)
    refused = discovery.scan([path.parent])[0]
    assert refused.error is not None
    assert refused.error.startswith("refused: the file is writable by its group")
    assert "allow_insecure_permissions" in refused.error
    allowed = discovery.scan([path.parent], allow_insecure_permissions=True)[0]
    assert allowed.ok


def test_a_plain_scan_stays_in_the_folder_and_a_recursive_one_goes_down(
    tmp_path: Path, build_plugin: BuildPlugin
) -> None:
    top = tmp_path / "plugins"
    build_plugin(good_source("top"), "top", top)
    build_plugin(good_source("deep"), "deep", top / "a" / "b")
    (top / "a" / "loop").symlink_to(top)  # a link loop must not trap the walk
    assert [r.name for r in discovery.scan([top])] == ["top"]
    assert [r.name for r in discovery.scan([top], recursive=True)] == ["top", "deep"]


def test_a_missing_folder_is_logged_and_passed_over(tmp_path: Path) -> None:
    with capture_logs() as logs:
        assert discovery.scan([tmp_path / "absent"]) == []
    assert logs[0]["event"] == "plugin_directory_missing"


# -- the sniffing step --------------------------------------------------------------


def test_sniffing_accepts_elf_mach_o_and_pe_symbol_spellings(tmp_path: Path) -> None:
    """Files that pass the cheap test go on to the scanner (which cannot load these
    fakes); files that fail it are skipped without loading."""
    folder = tmp_path / "fakes"
    folder.mkdir()
    entry = b"backworks_plugin_entry"
    chunk = discovery._CHUNK
    fakes = {
        # ELF .dynstr: NUL on both sides, here split across two reads of the file.
        "split.so": b"\x7fELF" + b"\0" * (chunk - 10) + entry + b"\0" + b"\0" * 64,
        "macho.dylib": b"\xcf\xfa\xed\xfe" + b"\0" * 60 + b"\0_" + entry + b"\0",
        "pe.dll": b"MZ" + b"\0" * 62 + b"\0" + entry + b"\0",
        "prefixed.so": b"\x7fELF" + b"\0" * 60 + b"\0x" + entry + b"\0",
        "longer.so": b"\x7fELF" + b"\0" * 60 + b"\0" + entry + b"_v2\0",
    }
    for name, data in fakes.items():
        (folder / name).write_bytes(data)
    results = {Path(r.path).name: r for r in discovery.scan([folder])}
    for name in ("split.so", "macho.dylib", "pe.dll"):
        assert not results[name].skipped, name
        assert (results[name].error or "").startswith("cannot be loaded"), name
    for name in ("prefixed.so", "longer.so"):
        assert results[name].error == NOT_A_PLUGIN, name


# -- one file -------------------------------------------------------------------------


def test_examine_reads_one_plugin_in_a_child(tmp_path: Path, build_plugin: BuildPlugin) -> None:
    path = build_plugin(good_source("single"), "single")
    result = discovery.examine(path)
    assert (result.ok, result.name, result.path) == (True, "single", str(path))


def test_examine_blames_a_crashing_plugin_and_returns(
    tmp_path: Path, build_plugin: BuildPlugin
) -> None:
    path = build_plugin(raw_source(constructor=SEGFAULT), "segv")
    assert discovery.examine(path).error == "crashed with SIGSEGV while loading"


def test_scan_result_json_round_trips_and_rejects_malformed_data() -> None:
    result = ScanResult(path="p", ok=True, name="x", abi="1.0", flags=["thread_safe"])
    assert ScanResult.from_json(result.to_json()) == result
    with pytest.raises(ValueError, match="an ok result needs a name"):
        ScanResult(path="p", ok=True)
    with pytest.raises(ValueError, match="expected an object with the keys"):
        ScanResult.from_json({"path": "p"})
