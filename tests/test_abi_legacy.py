"""The legacy ABI adapter (backworks.abi.legacy) against real C libraries of the original design.

`tests/plugins/legacy.c` is compiled once per session and copied per test, so every
test loads its own file and gets fresh globals; the tests read those globals with
ctypes on the same file (a second dlopen of one path returns the same handle).
"""

from __future__ import annotations

import ctypes
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from backworks.abi import (
    LOG_WARN,
    CancelFlag,
    PluginInstance,
    PluginLibrary,
    Request,
    Response,
    open_plugin_library,
)
from backworks.abi.legacy import LegacyLibrary
from backworks.errors import PluginCallError, PluginCancelledError, PluginInitError, PluginLoadError
from backworks.plugins import discovery
from backworks.plugins.scan_cache import FileKey, ScanCache
from tests.conftest import BuildPlugin

LEGACY = (Path(__file__).parent / "plugins" / "legacy.c").read_text()

Logs = list[tuple[int, str]]


@pytest.fixture
def legacy_path(build_plugin: BuildPlugin) -> Path:
    return build_plugin(LEGACY, name="legacy")


@pytest.fixture
def library(legacy_path: Path) -> PluginLibrary:
    return open_plugin_library(legacy_path)


def counter(path: Path, name: str) -> int:
    return ctypes.c_int.in_dll(ctypes.CDLL(str(path)), name).value


def start(library: PluginLibrary, config: Any = None) -> tuple[PluginInstance, Logs]:
    logs: Logs = []
    text = b"" if config is None else json.dumps(config).encode()
    return library.instantiate(text, lambda level, msg: logs.append((level, msg))), logs


def call(
    instance: PluginInstance,
    endpoint: str,
    *,
    method: str = "GET",
    path: str = "/some/path",
    body: bytes = b"",
) -> Response:
    return instance.handle(Request(method, path, endpoint=endpoint, body=body), CancelFlag())


# -- loading ---------------------------------------------------------------------------


def test_a_legacy_library_is_described_as_abi_0_and_not_thread_safe(
    library: PluginLibrary, legacy_path: Path
) -> None:
    assert isinstance(library, LegacyLibrary)
    info = library.info
    assert (info.name, info.version) == ("legacy-echo", "0.3.0")
    assert info.description == "A plugin written for the original design"
    assert (info.abi, info.legacy, info.path) == ("0 (legacy)", True, str(legacy_path))
    assert (info.flags, info.flag_names, info.thread_safe, info.nonblocking) == (
        0,
        [],
        False,
        False,
    )
    assert (info.has_health, info.has_on_request, info.has_on_response) == (False, False, False)


LEGACY_HEADER = """
#include <stddef.h>
#include <stdint.h>
struct plugin_info { const char *name; const char *version; const char *description; };
"""


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (
            "const struct plugin_info *plugin_info(void) { return NULL; }",
            "plugin_info() returned NULL",
        ),
        (
            'static const struct plugin_info i = {NULL, "1", ""};\n'
            "const struct plugin_info *plugin_info(void) { return &i; }",
            "plugin_info() field 'name' is NULL",
        ),
        (
            'static const struct plugin_info i = {"Bad Name", "1", ""};\n'
            "const struct plugin_info *plugin_info(void) { return &i; }",
            "plugin name 'Bad Name' is invalid: expected [a-z0-9][a-z0-9_-]{0,63}",
        ),
        (
            'static const struct plugin_info i = {"ok", "1", "\\xff"};\n'
            "const struct plugin_info *plugin_info(void) { return &i; }",
            "plugin_info() field 'description' is not UTF-8",
        ),
        (
            "int32_t plugin_initialize(const char *c) { (void)c; return 0; }",
            "does not export backworks_plugin_entry() (nor the legacy plugin_info())",
        ),
    ],
)
def test_an_unusable_plugin_info_is_refused_with_the_reason(
    build_plugin: BuildPlugin, body: str, reason: str
) -> None:
    path = build_plugin(LEGACY_HEADER + body, name="faulty")
    with pytest.raises(PluginLoadError) as caught:
        open_plugin_library(path)
    assert caught.value.reason == reason


def test_a_library_exporting_both_abis_is_loaded_as_abi_1(build_plugin: BuildPlugin) -> None:
    source = (
        "#include <backworks/sdk.h>\n"
        "static int32_t h(void *s, const bw_request *r, bw_response *o) {\n"
        '    (void)s; (void)r; return bw_respond_text(o, 200, "v1");\n'
        "}\n"
        'BW_DEFINE_PLUGIN(.name = "both", .version = "1.0.0", .init = bw_init_stateless,'
        " .handle = h)\n"
        "struct plugin_info { const char *name, *version, *description; };\n"
        'static const struct plugin_info i = {"both-legacy", "0.1", ""};\n'
        "const struct plugin_info *plugin_info(void);\n"
        "const struct plugin_info *plugin_info(void) { return &i; }\n"
    )
    info = open_plugin_library(build_plugin(source, name="both")).info
    assert (info.name, info.abi, info.legacy) == ("both", "1.0", False)


def test_only_plugin_info_is_required(build_plugin: BuildPlugin) -> None:
    source = LEGACY_HEADER + (
        'static const struct plugin_info i = {"bare", "0.1", NULL};\n'
        "const struct plugin_info *plugin_info(void);\n"
        "const struct plugin_info *plugin_info(void) { return &i; }\n"
    )
    library = open_plugin_library(build_plugin(source, name="bare"))
    assert library.info.description == ""
    instance, _ = start(library, {"ignored": True})
    response = call(instance, "/anything")
    assert response.status == 404
    assert json.loads(response.body) == {"error": "bare does not handle GET /anything"}
    instance.shutdown()


# -- initialize and shutdown -----------------------------------------------------------


def test_initialize_gets_the_config_json(library: PluginLibrary) -> None:
    instance, _ = start(library, {"api_key": "abc"})
    assert json.loads(call(instance, "/config").body) == {"config": {"api_key": "abc"}}


def test_an_empty_config_reaches_initialize_as_an_empty_object(library: PluginLibrary) -> None:
    instance, _ = start(library)
    assert json.loads(call(instance, "/config").body) == {"config": {}}


def test_initialize_returning_non_zero_is_an_init_error(
    library: PluginLibrary, legacy_path: Path
) -> None:
    with pytest.raises(PluginInitError) as caught:
        start(library, {"fail": True})
    assert (caught.value.plugin, caught.value.message) == (
        "legacy-echo",
        "plugin_initialize returned 5",
    )
    assert counter(legacy_path, "legacy_initialized") == 1


def test_shutdown_runs_once_and_later_calls_are_refused(
    library: PluginLibrary, legacy_path: Path
) -> None:
    instance, logs = start(library)
    instance.shutdown()
    instance.shutdown()
    assert counter(legacy_path, "legacy_shutdowns") == 1
    assert logs == []
    with pytest.raises(PluginCallError, match="handle called after shutdown"):
        call(instance, "/echo")


def test_shutdown_returning_non_zero_is_logged(library: PluginLibrary) -> None:
    instance, logs = start(library, {"shutdown_fails": True})
    instance.shutdown()
    assert logs == [(LOG_WARN, "plugin_shutdown returned 9")]


# -- requests --------------------------------------------------------------------------


def test_endpoint_method_and_body_reach_process_endpoint(library: PluginLibrary) -> None:
    instance, _ = start(library)
    response = call(instance, "/items/{id}/echo", method="POST", body=b"payload")
    assert (response.status, response.content_type, response.headers) == (200, "", ())
    assert json.loads(response.body) == {
        "endpoint": "/items/{id}/echo",
        "method": "POST",
        "data_len": 7,
    }


def test_the_path_stands_in_for_a_missing_endpoint(library: PluginLibrary) -> None:
    instance, _ = start(library)
    response = instance.handle(Request("GET", "/direct/echo"), CancelFlag())
    assert json.loads(response.body)["endpoint"] == "/direct/echo"


def test_not_handled_is_a_json_404_naming_the_request(library: PluginLibrary) -> None:
    instance, _ = start(library)
    response = call(instance, "/weather/{city}", method="DELETE")
    assert (response.status, response.content_type) == (404, "")
    assert json.loads(response.body) == {
        "error": "legacy-echo does not handle DELETE /weather/{city}"
    }


def test_the_body_arrives_as_utf8_text(library: PluginLibrary) -> None:
    instance, _ = start(library)
    assert call(instance, "/raw", body="grüße".encode()).body == "grüße".encode()
    # Invalid UTF-8 becomes U+FFFD: plugins of that design take `&str`s.
    assert call(instance, "/raw", body=b"a\xffb").body == "a\ufffdb".encode()


def test_a_static_answer_is_copied_and_never_freed(library: PluginLibrary) -> None:
    instance, _ = start(library)
    for _ in range(3):
        assert call(instance, "/static").body == b'{"static": true}'


def test_an_answer_over_the_limit_is_a_call_error(library: PluginLibrary) -> None:
    """The limit is the plugin's max_response_mb, in bytes."""
    small = library.instantiate(b"{}", lambda level, msg: None, max_response_bytes=999)
    with pytest.raises(PluginCallError, match="more than 999 bytes"):
        call(small, "/big")
    exact = library.instantiate(b"{}", lambda level, msg: None, max_response_bytes=1000)
    assert call(exact, "/big").body == b"x" * 1000


def test_a_call_cancelled_before_it_starts_is_not_made(
    library: PluginLibrary, legacy_path: Path
) -> None:
    instance, _ = start(library)
    cancel = CancelFlag()
    cancel.set()
    with pytest.raises(PluginCancelledError):
        instance.handle(Request("GET", "/x", endpoint="/echo"), cancel)
    assert counter(legacy_path, "legacy_calls") == 0


def test_hooks_and_health_do_not_exist_in_the_legacy_abi(library: PluginLibrary) -> None:
    instance, _ = start(library)
    request = Request("GET", "/x", endpoint="/echo")
    assert instance.on_request(request, CancelFlag()) is None
    assert instance.on_response(request, call(instance, "/echo"), CancelFlag()) is None
    assert instance.health() is None


def test_calls_never_overlap_even_across_instances(library: PluginLibrary) -> None:
    """The plugin's state is global: one library, one call at a time."""
    first, _ = start(library)
    second, _ = start(library)
    with ThreadPoolExecutor(max_workers=6) as pool:
        answers = list(pool.map(lambda i: call((first, second)[i % 2], "/slow"), range(12)))
    assert all(a.status == 200 for a in answers)
    assert json.loads(call(first, "/overlaps").body) == {"overlaps": 0}


# -- discovery -------------------------------------------------------------------------


def test_discovery_lists_a_legacy_library_as_abi_0(legacy_path: Path) -> None:
    result = discovery.examine(legacy_path)
    assert (result.ok, result.name, result.abi, result.flags) == (
        True,
        "legacy-echo",
        "0 (legacy)",
        (),
    )


def test_a_cached_not_a_plugin_verdict_of_older_symbols_is_examined_again(
    legacy_path: Path, tmp_path: Path
) -> None:
    """A scan cache written before legacy libraries were taken does not hide them."""
    cache_dir = tmp_path / "cache"
    cache = ScanCache.load(cache_dir)
    old = "not a Backworks plugin (no backworks_plugin_entry symbol)"
    key = FileKey.of(str(legacy_path), legacy_path.stat())
    cache.put(key, discovery.ScanResult.failure(str(legacy_path), old, skipped=True))
    cache.save()
    [result] = discovery.scan([legacy_path.parent], cache_dir=cache_dir)
    assert (result.ok, result.abi) == (True, "0 (legacy)")
