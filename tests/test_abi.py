"""The cffi binding against real C plugins: loading, marshalling, ownership, threads.

Two plugin sources are compiled once per session. PROBE is a well-behaved plugin whose
every response comes from a counted block, so a test can check that the host released
each one exactly once; it reads the counters with ctypes on the same library file (a
second dlopen of one path returns the same handle, so the statics are shared). FAULTY
is a library with one descriptor per fault, chosen by its `probe_fault` global before
the host opens it.
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import attrs
import pytest

from backworks.abi import (
    ABI_VERSION,
    CancelFlag,
    NativeInstance,
    NativeLibrary,
    Request,
    Response,
    ffi,
    open_library,
)
from backworks.errors import (
    AbiMismatchError,
    PluginCallError,
    PluginCancelledError,
    PluginInitError,
    PluginLoadError,
)
from tests.conftest import BuildPlugin

PROBE = r"""
#define _POSIX_C_SOURCE 200809L
#include <backworks/sdk.h>
#include <pthread.h>
#include <time.h>

/* Read by the tests through ctypes. */
int probe_made, probe_released, probe_shutdowns, probe_waiting;

typedef struct { const bw_host *host; } probe_state;

static void counted_release(void *block) {
    __atomic_add_fetch(&probe_released, 1, __ATOMIC_SEQ_CST);
    free(block);
}

/* bw_respond, with a release that counts. */
static int32_t answer(bw_response *resp, int32_t status, const char *ctype,
                      const bw_header *headers, size_t headers_len,
                      const void *body, size_t body_len) {
    int32_t rc = bw_respond(resp, status, ctype, headers, headers_len, body, body_len);
    if (rc == BW_OK) {
        resp->release = counted_release;
        __atomic_add_fetch(&probe_made, 1, __ATOMIC_SEQ_CST);
    }
    return rc;
}

static int32_t answer_text(bw_response *resp, int32_t status, const char *text) {
    return answer(resp, status, "text/plain", NULL, 0, text, strlen(text));
}

static int starts_with(bw_str s, const char *prefix) {
    size_t n = strlen(prefix);
    return s.len >= n && memcmp(s.ptr, prefix, n) == 0;
}

static void sleep_ms(long ms) {
    struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
    nanosleep(&ts, NULL);
}

/* ---- /echo: every request field back, as JSON with hex-encoded bytes ---------- */

static char *put_hex(char *out, const void *data, size_t len) {
    static const char digits[] = "0123456789abcdef";
    const unsigned char *p = (const unsigned char *)data;
    size_t i;
    *out++ = '"';
    for (i = 0; i < len; i++) { *out++ = digits[p[i] >> 4]; *out++ = digits[p[i] & 15]; }
    *out++ = '"';
    return out;
}

static char *put_pairs(char *out, const bw_header *pairs, size_t n) {
    size_t i;
    *out++ = '[';
    for (i = 0; i < n; i++) {
        if (i) *out++ = ',';
        *out++ = '[';
        out = put_hex(out, pairs[i].name.ptr, pairs[i].name.len);
        *out++ = ',';
        out = put_hex(out, pairs[i].value.ptr, pairs[i].value.len);
        *out++ = ']';
    }
    *out++ = ']';
    return out;
}

static size_t pairs_size(const bw_header *pairs, size_t n) {
    size_t i, size = 2;
    for (i = 0; i < n; i++) size += 2 * (pairs[i].name.len + pairs[i].value.len) + 8;
    return size;
}

static int32_t echo(const bw_request *req, bw_response *resp) {
    size_t size = 512 + 2 * (req->method.len + req->path.len + req->query.len +
                             req->endpoint.len + req->request_id.len + req->body_len) +
                  pairs_size(req->params, req->params_len) +
                  pairs_size(req->headers, req->headers_len);
    char *json = (char *)malloc(size), *out = json;
    int32_t rc;
    if (!json) return BW_FAIL;
    out += sprintf(out, "{\"struct_size\": %u, \"method\": ", (unsigned)req->struct_size);
    out = put_hex(out, req->method.ptr, req->method.len);
    out += sprintf(out, ", \"path\": ");
    out = put_hex(out, req->path.ptr, req->path.len);
    out += sprintf(out, ", \"query\": ");
    out = put_hex(out, req->query.ptr, req->query.len);
    out += sprintf(out, ", \"endpoint\": ");
    out = put_hex(out, req->endpoint.ptr, req->endpoint.len);
    out += sprintf(out, ", \"request_id\": ");
    out = put_hex(out, req->request_id.ptr, req->request_id.len);
    out += sprintf(out, ", \"body\": ");
    out = put_hex(out, req->body, req->body_len);
    out += sprintf(out, ", \"params\": ");
    out = put_pairs(out, req->params, req->params_len);
    out += sprintf(out, ", \"headers\": ");
    out = put_pairs(out, req->headers, req->headers_len);
    out += sprintf(out, ", \"timeout_ms\": %u, \"cancelled_ptr\": %d, \"cancelled\": %u}",
                   (unsigned)req->timeout_ms, req->cancelled != NULL,
                   req->cancelled ? (unsigned)*req->cancelled : 0u);
    rc = answer(resp, 200, NULL, NULL, 0, json, (size_t)(out - json));
    free(json);
    return rc;
}

/* ---- /log-thread: host->log from a thread the plugin starts ------------------- */

static void *log_from_thread(void *arg) {
    const bw_host *host = (const bw_host *)arg;
    host->log(host->ctx, BW_LOG_ERROR, "from a plugin thread", 20);
    return NULL;
}

static int32_t probe_init(const bw_host *host, const char *config, size_t config_len,
                          void **state, bw_response *error) {
    probe_state *st;
    /* The config is `config_len` bytes and also NUL-terminated. */
    if (config[config_len] != '\0') return answer_text(error, 0, "config not terminated"), BW_FAIL;
    host->log(host->ctx, BW_LOG_DEBUG, config, config_len);
    if (strstr(config, "\"fail\"")) {
        answer_text(error, 0, "cannot open /etc/probe.key: permission denied\n");
        return BW_FAIL;
    }
    if (strstr(config, "\"silent-fail\"")) return 5;
    st = (probe_state *)calloc(1, sizeof *st);
    if (!st) return BW_FAIL;
    st->host = host;
    *state = st;
    return BW_OK;
}

static int32_t probe_handle(void *state, const bw_request *req, bw_response *resp) {
    probe_state *st = (probe_state *)state;
    if (starts_with(req->path, "/echo")) return echo(req, resp);
    if (starts_with(req->path, "/binary"))
        return answer(resp, 200, "application/octet-stream", NULL, 0, req->body, req->body_len);
    if (starts_with(req->path, "/headers")) {
        bw_header h[2];
        h[0].name = bw_str_from("x-one"); h[0].value = bw_str_from("1");
        h[1].name = bw_str_from("x-two"); h[1].value = bw_str_from("two words");
        return answer(resp, 207, "text/csv; charset=utf-8", h, 2, "a,b\n", 4);
    }
    if (starts_with(req->path, "/fail-silent")) return BW_FAIL;
    if (starts_with(req->path, "/fail")) {
        answer_text(resp, 0, "disk on fire");
        return BW_FAIL;
    }
    if (starts_with(req->path, "/code")) {
        answer_text(resp, 0, "an odd code");
        return 7;
    }
    if (starts_with(req->path, "/malformed-body")) {
        answer_text(resp, 200, "x");
        resp->body = NULL;
        resp->body_len = 5;
        return BW_OK;
    }
    if (starts_with(req->path, "/malformed-headers")) {
        answer_text(resp, 200, "x");
        resp->headers = NULL;
        resp->headers_len = 3;
        return BW_OK;
    }
    if (starts_with(req->path, "/huge-body")) {
        /* A C `-1` stored into a size_t. */
        answer_text(resp, 200, "x");
        resp->body_len = (size_t)-1;
        return BW_OK;
    }
    if (starts_with(req->path, "/huge-headers")) {
        bw_header h[1];
        h[0].name = bw_str_from("x-one"); h[0].value = bw_str_from("1");
        answer(resp, 200, NULL, h, 1, "x", 1);
        resp->headers_len = (size_t)-1;
        return BW_OK;
    }
    if (starts_with(req->path, "/malformed-fail")) {
        answer_text(resp, 0, "x");
        resp->body = NULL;
        resp->body_len = 5;
        return BW_FAIL;
    }
    if (starts_with(req->path, "/wait")) {
        int waited;
        if (bw_is_cancelled(req)) return answer_text(resp, 500, "cancelled before start");
        __atomic_store_n(&probe_waiting, 1, __ATOMIC_SEQ_CST);
        for (waited = 0; waited < 5000; waited++) {
            if (bw_is_cancelled(req)) {
                answer_text(resp, 0, "stopped");
                return BW_CANCELLED;
            }
            sleep_ms(1);
        }
        return answer_text(resp, 200, "never cancelled");
    }
    if (starts_with(req->path, "/log-thread")) {
        pthread_t thread;
        if (pthread_create(&thread, NULL, log_from_thread, (void *)st->host)) return BW_FAIL;
        pthread_join(thread, NULL);
        return answer_text(resp, 200, "logged");
    }
    if (starts_with(req->path, "/log")) {
        /* message_len counts, not a NUL: only "warn-xyz" is the message. */
        st->host->log(st->host->ctx, BW_LOG_WARN, "warn-xyz and more", 8);
        return answer_text(resp, 200, "logged");
    }
    return answer_text(resp, 404, "no such probe");
}

static int32_t probe_health(void *state, bw_response *report) {
    (void)state;
    return answer(report, 429, NULL, NULL, 0, "{\"degraded\": true}", 18);
}

static int32_t probe_on_request(void *state, const bw_request *req, bw_response *resp) {
    (void)state;
    if (bw_header_get(req, "x-deny")) return answer_text(resp, 401, "denied");
    if (bw_header_get(req, "x-fail")) {
        answer_text(resp, 0, "hook broke");
        return BW_FAIL;
    }
    /* Status 0 lets the request go on; the body is still ours to release. */
    return answer_text(resp, 0, "ignored");
}

static int32_t probe_on_response(void *state, const bw_request *req,
                                 const bw_response *up, bw_response *out) {
    char *text, *cursor;
    size_t i, size = 64 + up->content_type.len + up->body_len;
    int32_t rc;
    (void)state;
    if (starts_with(req->path, "/keep")) return answer_text(out, 0, "kept");
    for (i = 0; i < up->headers_len; i++)
        size += up->headers[i].name.len + up->headers[i].value.len + 2;
    text = (char *)malloc(size);
    if (!text) return BW_FAIL;
    /* "<status>|<content type>|<name>=<value>;...|<body>" */
    cursor = text + sprintf(text, "%d|", (int)up->status);
    memcpy(cursor, up->content_type.ptr, up->content_type.len);
    cursor += up->content_type.len;
    *cursor++ = '|';
    for (i = 0; i < up->headers_len; i++) {
        memcpy(cursor, up->headers[i].name.ptr, up->headers[i].name.len);
        cursor += up->headers[i].name.len;
        *cursor++ = '=';
        memcpy(cursor, up->headers[i].value.ptr, up->headers[i].value.len);
        cursor += up->headers[i].value.len;
        *cursor++ = ';';
    }
    *cursor++ = '|';
    if (up->body_len) memcpy(cursor, up->body, up->body_len);
    cursor += up->body_len;
    rc = answer(out, 203, "text/x-replaced", NULL, 0, text, (size_t)(cursor - text));
    free(text);
    return rc;
}

static void probe_shutdown(void *state) {
    __atomic_add_fetch(&probe_shutdowns, 1, __ATOMIC_SEQ_CST);
    free(state);
}

BW_DEFINE_PLUGIN(.name = "probe", .version = "1.2.3", .description = "Probes the host",
                 .flags = BW_FLAG_THREAD_SAFE | BW_FLAG_NONBLOCKING,
                 .init = probe_init, .handle = probe_handle, .health = probe_health,
                 .shutdown = probe_shutdown, .on_request = probe_on_request,
                 .on_response = probe_on_response)
"""

FAULTY = r"""
#include <backworks/sdk.h>

/* Set by the test (through ctypes) before the host calls the entry point. */
int probe_fault;

static int32_t ok_handle(void *state, const bw_request *req, bw_response *resp) {
    (void)state; (void)req;
    return bw_respond_json(resp, 200, "{\"ok\": true}");
}

#define LONG_NAME "a123456789012345678901234567890123456789012345678901234567890123"
#define DESC(abi, size, name, version, init, handle) \
    {{abi, size, name, version, "a faulty plugin", 0, init, handle, 0, 0, 0, 0}, {0, 0}}

/* A later minor appends fields: room for them after the 1.0 descriptor. */
typedef struct { bw_plugin plugin; void *appended[2]; } wide_plugin;

/* Short names, to keep the table readable. */
#define V BW_ABI_VERSION
#define S sizeof(bw_plugin)
#define I bw_init_stateless
#define H ok_handle

static const wide_plugin descriptors[] = {
    /* 0 */ DESC(V, S, "faulty", "1.0.0", I, H),
    /* 1 */ DESC(0, 0, 0, 0, 0, 0), /* the entry point returns NULL */
    /* 2 */ DESC(0x00020001, S, "faulty", "1.0.0", I, H),
    /* 3 */ DESC(V, S - 8, "faulty", "1.0.0", I, H),
    /* 4 */ DESC(V, S, "faulty", "1.0.0", 0, H),
    /* 5 */ DESC(V, S, "faulty", "1.0.0", I, 0),
    /* 6 */ DESC(V, S, "Faulty", "1.0.0", I, H),
    /* 7 */ DESC(V, S, LONG_NAME "4", "1.0.0", I, H),
    /* 8 */ DESC(V, S, 0, "1.0.0", I, H),
    /* 9 */ DESC(V, S, "faulty", 0, I, H),
    /* 10 */ DESC(0x00010003, sizeof(wide_plugin), "faulty", "1.0.0", I, H),
    /* 11 */ DESC(V, S, "", "1.0.0", I, H),
    /* 12 */ DESC(V, S, "my plugin", "1.0.0", I, H),
    /* 13 */ DESC(V, S, LONG_NAME, "1.0.0", I, H),
    /* 14 */ DESC(0x00000007, S, "faulty", "1.0.0", I, H),
};

BW_EXPORT const bw_plugin *backworks_plugin_entry(uint32_t host_abi_version) {
    (void)host_abi_version;
    return probe_fault == 1 ? NULL : &descriptors[probe_fault].plugin;
}
"""

NOT_A_PLUGIN = "int not_a_plugin(void) { return 0; }\n"


@attrs.define
class Probe:
    """A loaded PROBE instance, its log lines and its counters."""

    path: Path
    instance: NativeInstance
    logs: list[tuple[int, str]]
    counters: ctypes.CDLL

    def counter(self, name: str) -> int:
        return ctypes.c_int.in_dll(self.counters, f"probe_{name}").value

    @property
    def balance(self) -> tuple[int, int]:
        """(responses made, responses released)."""
        return self.counter("made"), self.counter("released")


def _pthread() -> tuple[str, ...]:
    return () if sys.platform == "win32" else ("-pthread",)


@pytest.fixture
def probe_path(build_plugin: BuildPlugin) -> Path:
    return build_plugin(PROBE, name="probe", extra_flags=_pthread())


@pytest.fixture
def probe(probe_path: Path) -> Iterator[Probe]:
    logs: list[tuple[int, str]] = []
    instance = open_library(probe_path).instantiate(b'{"greeting": "hi"}', _sink(logs))
    yield Probe(probe_path, instance, logs, ctypes.CDLL(str(probe_path)))
    instance.shutdown()


def _sink(logs: list[tuple[int, str]]) -> Callable[[int, str], None]:
    return lambda level, message: logs.append((level, message))


def _faulty(build_plugin: BuildPlugin, fault: int) -> Path:
    path = build_plugin(FAULTY, name="faulty")
    ctypes.c_int.in_dll(ctypes.CDLL(str(path)), "probe_fault").value = fault
    return path


# ---------------------------------------------------------------------------
# Loading and the descriptor


def test_a_well_formed_plugin_loads_with_what_its_descriptor_says(probe_path: Path) -> None:
    info = open_library(probe_path).info
    assert (info.name, info.version, info.description) == ("probe", "1.2.3", "Probes the host")
    assert info.path == str(probe_path)
    assert info.abi == "1.0"
    assert info.abi_version == ABI_VERSION
    assert info.flag_names == ["thread_safe", "nonblocking"]
    assert info.thread_safe
    assert info.nonblocking
    assert (info.has_health, info.has_on_request, info.has_on_response) == (True, True, True)
    assert not info.legacy


def test_a_plugin_without_optional_functions_says_so_and_has_no_health(
    build_plugin: BuildPlugin,
) -> None:
    library = open_library(_faulty(build_plugin, 0))
    info = library.info
    assert (info.has_health, info.has_on_request, info.has_on_response) == (False, False, False)
    assert info.flag_names == []
    instance = library.instantiate(b"{}", _sink([]))
    req = Request("GET", "/")
    assert instance.health() is None
    assert instance.on_request(req, CancelFlag()) is None
    assert instance.on_response(req, Response(200, b"up"), CancelFlag()) is None
    assert instance.handle(req, CancelFlag()) == Response(200, b'{"ok": true}')
    instance.shutdown()  # no shutdown function: nothing to call


DESCRIPTOR_FAULTS = [
    pytest.param(
        1,
        AbiMismatchError,
        ["plugin declined host ABI 1.0", "rebuild it against this host's SDK: C with `-I "],
        id="entry-returns-null",
    ),
    pytest.param(
        2,
        AbiMismatchError,
        ["plugin ABI 2.1", "host speaks ABI 1.0", "rebuild the plugin against Backworks SDK 1.x"],
        id="other-major",
    ),
    pytest.param(
        14, AbiMismatchError, ["plugin ABI 0.7", "SDK 1.x"], id="major-zero-in-a-v1-descriptor"
    ),
    pytest.param(
        3, AbiMismatchError, ["struct_size is", "smaller than ABI 1.0's"], id="struct-too-small"
    ),
    pytest.param(4, PluginLoadError, ["no 'init' function", "required"], id="no-init"),
    pytest.param(5, PluginLoadError, ["no 'handle' function", "required"], id="no-handle"),
    pytest.param(6, PluginLoadError, ["'Faulty' is invalid", "[a-z0-9]"], id="uppercase-name"),
    pytest.param(7, PluginLoadError, ["is invalid", "{0,63}"], id="name-65-chars"),
    pytest.param(11, PluginLoadError, ["'' is invalid"], id="empty-name"),
    pytest.param(12, PluginLoadError, ["'my plugin' is invalid"], id="name-with-space"),
    pytest.param(8, PluginLoadError, ["'name' is NULL"], id="null-name"),
    pytest.param(9, PluginLoadError, ["'version' is NULL"], id="null-version"),
]


@pytest.mark.parametrize(("fault", "error", "fragments"), DESCRIPTOR_FAULTS)
def test_a_faulty_descriptor_is_refused_with_a_message_naming_file_and_fault(
    build_plugin: BuildPlugin, fault: int, error: type[Exception], fragments: list[str]
) -> None:
    path = _faulty(build_plugin, fault)
    with pytest.raises(error) as caught:
        open_library(path)
    assert type(caught.value) is error
    message = str(caught.value)
    assert message.startswith(f"{path}: ")
    for fragment in fragments:
        assert fragment in message


def test_a_64_character_name_is_the_longest_accepted(build_plugin: BuildPlugin) -> None:
    assert len(open_library(_faulty(build_plugin, 13)).info.name) == 64


def test_a_newer_minor_with_a_larger_descriptor_is_accepted_and_served(
    build_plugin: BuildPlugin,
) -> None:
    library = open_library(_faulty(build_plugin, 10))
    assert library.info.abi == "1.3"
    instance = library.instantiate(b"{}", _sink([]))
    assert instance.handle(Request("GET", "/"), CancelFlag()).status == 200


def test_a_library_without_the_entry_symbol_is_not_a_plugin(build_plugin: BuildPlugin) -> None:
    path = build_plugin(NOT_A_PLUGIN, name="notaplugin")
    with pytest.raises(PluginLoadError, match=r"does not export backworks_plugin_entry\(\)") as e:
        open_library(path)
    assert e.value.path == str(path)


def test_a_file_that_is_no_library_cannot_be_loaded(tmp_path: Path) -> None:
    path = tmp_path / "libjunk.so"
    path.write_bytes(b"\x7fELF but not really")
    with pytest.raises(PluginLoadError, match="cannot be loaded") as e:
        open_library(path)
    assert e.value.path == str(path)


def test_a_relative_path_loads_that_file_not_a_library_from_the_search_path(
    probe_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(probe_path.parent)
    assert open_library(probe_path.name).info.name == "probe"
    # A bare name must not fall back to the system's library search (libm here).
    with pytest.raises(PluginLoadError, match="cannot be loaded: no such file"):
        open_library("m")


def test_a_missing_file_is_named_as_missing(tmp_path: Path) -> None:
    with pytest.raises(PluginLoadError, match=r"libgone\.so: cannot be loaded: no such file$"):
        open_library(tmp_path / "libgone.so")


@pytest.mark.skipif(not hasattr(os, "RTLD_NOLOAD"), reason="needs dlopen(RTLD_NOLOAD)")
def test_a_library_stays_loaded_after_the_host_drops_it(build_plugin: BuildPlugin) -> None:
    path = build_plugin(FAULTY, name="sticky")
    library: NativeLibrary | None = open_library(path)
    assert library is not None
    del library
    gc.collect()
    ctypes.CDLL(str(path), mode=os.RTLD_NOLOAD)  # raises OSError once unloaded


# ---------------------------------------------------------------------------
# init and shutdown


def test_init_gets_the_config_and_a_host_that_logs(probe: Probe) -> None:
    assert probe.logs == [(10, '{"greeting": "hi"}')]


def test_init_failure_surfaces_the_plugins_own_message_and_releases_it(
    probe_path: Path,
) -> None:
    library = open_library(probe_path)
    with pytest.raises(PluginInitError) as e:
        library.instantiate(b'{"fail": true}', _sink([]))
    assert e.value.plugin == "probe"
    assert e.value.message == "cannot open /etc/probe.key: permission denied"
    counters = ctypes.CDLL(str(probe_path))
    made = ctypes.c_int.in_dll(counters, "probe_made").value
    assert made == ctypes.c_int.in_dll(counters, "probe_released").value == 1


def test_init_failure_without_a_message_names_the_return_code(probe_path: Path) -> None:
    with pytest.raises(PluginInitError, match="init returned 5 with no message"):
        open_library(probe_path).instantiate(b'{"silent-fail": true}', _sink([]))


def test_shutdown_runs_once_however_often_the_host_asks(probe: Probe) -> None:
    with ThreadPoolExecutor(4) as pool:
        for future in [pool.submit(probe.instance.shutdown) for _ in range(8)]:
            future.result()
    probe.instance.shutdown()
    assert probe.counter("shutdowns") == 1


@pytest.mark.parametrize("call", ["handle", "on_request", "on_response", "health"])
def test_no_call_reaches_the_plugin_after_shutdown(probe: Probe, call: str) -> None:
    """Its state is freed: a call would be a use-after-free inside the plugin."""
    probe.instance.shutdown()
    req, cancel = Request("GET", "/echo"), CancelFlag()
    calls = {
        "handle": lambda: probe.instance.handle(req, cancel),
        "on_request": lambda: probe.instance.on_request(req, cancel),
        "on_response": lambda: probe.instance.on_response(req, Response(200), cancel),
        "health": probe.instance.health,
    }
    with pytest.raises(PluginCallError, match=f"{call} called after shutdown"):
        calls[call]()
    assert probe.balance == (0, 0)


# ---------------------------------------------------------------------------
# Requests in, responses out


def _echo(probe: Probe, req: Request, cancel: CancelFlag | None = None) -> dict[str, object]:
    resp = probe.instance.handle(req, cancel or CancelFlag())
    assert resp.status == 200
    seen: dict[str, object] = json.loads(resp.body)
    for key in ("method", "path", "query", "endpoint", "request_id", "body"):
        seen[key] = bytes.fromhex(str(seen[key]))
    for key in ("params", "headers"):
        pairs = seen[key]
        assert isinstance(pairs, list)
        seen[key] = [(bytes.fromhex(k), bytes.fromhex(v)) for k, v in pairs]
    return seen


def test_every_request_field_arrives_in_the_plugin(probe: Probe) -> None:
    body = b"\x00binary\x00with NULs\xff\xfe"
    req = Request(
        method="PATCH",
        path="/echo/zürich",
        query="a=1&b=%20x",
        endpoint="/echo/{city}",
        params=(("city", "zürich"), ("empty", "")),
        headers=(("x-a", "1"), ("content-type", "application/octet-stream"), ("x-e", "")),
        body=body,
        request_id="req-42",
        timeout_ms=1500,
    )
    seen = _echo(probe, req)
    assert seen == {
        "struct_size": ffi.sizeof("bw_request"),
        "method": b"PATCH",
        "path": "/echo/zürich".encode(),
        "query": b"a=1&b=%20x",
        "endpoint": b"/echo/{city}",
        "request_id": b"req-42",
        "body": body,
        "params": [(b"city", "zürich".encode()), (b"empty", b"")],
        "headers": [
            (b"x-a", b"1"),
            (b"content-type", b"application/octet-stream"),
            (b"x-e", b""),
        ],
        "timeout_ms": 1500,
        "cancelled_ptr": 1,
        "cancelled": 0,
    }


def test_an_empty_request_arrives_as_empty_fields(probe: Probe) -> None:
    seen = _echo(probe, Request("GET", "/echo"))
    assert (seen["query"], seen["body"], seen["params"], seen["headers"]) == (b"", b"", [], [])
    assert (seen["timeout_ms"], seen["cancelled_ptr"]) == (0, 1)


@pytest.mark.parametrize(("given", "sent"), [(-5, 0), (2**40, 0xFFFFFFFF), (7, 7)])
def test_timeout_ms_is_clamped_into_uint32(probe: Probe, given: int, sent: int) -> None:
    assert _echo(probe, Request("GET", "/echo", timeout_ms=given))["timeout_ms"] == sent


def test_text_fields_carry_the_exact_bytes_aiohttp_decoded(probe: Probe) -> None:
    raw = b"/echo/\xff\xfe"  # not UTF-8: aiohttp hands it over surrogate-escaped
    seen = _echo(probe, Request("GET", raw.decode("utf-8", "surrogateescape")))
    assert seen["path"] == raw


def test_a_set_cancel_flag_is_visible_in_the_request(probe: Probe) -> None:
    cancel = CancelFlag()
    cancel.set()
    assert cancel.is_set
    assert _echo(probe, Request("GET", "/echo"), cancel)["cancelled"] == 1


def test_binary_bodies_round_trip_every_byte_value(probe: Probe) -> None:
    body = bytes(range(256)) * 3
    resp = probe.instance.handle(Request("POST", "/binary", body=body), CancelFlag())
    assert resp == Response(200, body, "application/octet-stream")


def test_response_headers_and_content_type_are_copied(probe: Probe) -> None:
    resp = probe.instance.handle(Request("GET", "/headers"), CancelFlag())
    assert resp == Response(
        207, b"a,b\n", "text/csv; charset=utf-8", (("x-one", "1"), ("x-two", "two words"))
    )


# ---------------------------------------------------------------------------
# Failures and return codes


def test_bw_fail_carries_the_plugins_message(probe: Probe) -> None:
    with pytest.raises(PluginCallError) as e:
        probe.instance.handle(Request("GET", "/fail"), CancelFlag())
    assert e.value.plugin == "probe"
    assert e.value.message == "handle returned 1: disk on fire"


def test_bw_fail_without_a_message_names_the_return_code(probe: Probe) -> None:
    with pytest.raises(PluginCallError, match=r"handle returned 1$"):
        probe.instance.handle(Request("GET", "/fail-silent"), CancelFlag())


def test_an_unknown_return_code_is_a_failure(probe: Probe) -> None:
    with pytest.raises(PluginCallError, match="handle returned 7: an odd code"):
        probe.instance.handle(Request("GET", "/code"), CancelFlag())


@pytest.mark.parametrize(
    ("path", "fault"),
    [
        ("/malformed-body", "response body is NULL but its length is 5"),
        ("/malformed-headers", "response headers are NULL but headers_len is 3"),
        ("/huge-body", f"response body has an impossible length {2**64 - 1}"),
    ],
)
def test_a_malformed_response_is_a_call_failure(probe: Probe, path: str, fault: str) -> None:
    with pytest.raises(PluginCallError, match=f"malformed response: {fault}"):
        probe.instance.handle(Request("GET", path), CancelFlag())


def _wait_for_cancel(probe: Probe, *, cancel_after_start: bool) -> Response:
    cancel = CancelFlag()
    waiting = ctypes.c_int.in_dll(probe.counters, "probe_waiting")
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(probe.instance.handle, Request("GET", "/wait"), cancel)
        if cancel_after_start:
            deadline = time.monotonic() + 5
            while not waiting.value and time.monotonic() < deadline:
                time.sleep(0.001)
            assert waiting.value, "the plugin never started waiting"
            cancel.set()
        return future.result(timeout=10)


def test_cancel_flag_set_by_the_host_is_seen_by_a_plugin_polling_it(probe: Probe) -> None:
    """The call runs in a thread; this thread sets the flag while the plugin polls it.

    It also shows that a native call releases the GIL: otherwise this thread could not
    run until the plugin gave up after 5 s.
    """
    started = time.monotonic()
    with pytest.raises(PluginCancelledError) as e:
        _wait_for_cancel(probe, cancel_after_start=True)
    assert e.value.plugin == "probe"
    assert time.monotonic() - started < 4  # the plugin would give up after 5 s
    assert probe.balance == (1, 1)


def test_a_minus_one_headers_len_is_refused_not_walked(probe_path: Path) -> None:
    """Walking 2**64-1 headers reads unmapped memory: run in a child, so a regression
    fails this test instead of killing the run."""
    script = (
        "import sys\n"
        "from backworks.abi import CancelFlag, Request, open_library\n"
        "from backworks.errors import PluginCallError\n"
        "probe = open_library(sys.argv[1]).instantiate(b'{}', lambda level, msg: None)\n"
        "try:\n"
        "    probe.handle(Request('GET', '/huge-headers'), CancelFlag())\n"
        "except PluginCallError as e:\n"
        "    print(e.message)\n"
    )
    child = subprocess.run(
        [sys.executable, "-c", script, str(probe_path)], capture_output=True, text=True, timeout=60
    )
    assert child.returncode == 0, f"the host crashed ({child.returncode}): {child.stderr}"
    assert child.stdout.strip() == (
        f"returned a malformed response: response headers has an impossible length {2**64 - 1}"
    )


# ---------------------------------------------------------------------------
# release: exactly once, on every path

RELEASE_PATHS = [
    pytest.param("/echo", None, id="success"),
    pytest.param("/fail", PluginCallError, id="bw-fail-with-message"),
    pytest.param("/code", PluginCallError, id="unknown-code"),
    pytest.param("/malformed-body", PluginCallError, id="body-null-with-length"),
    pytest.param("/malformed-headers", PluginCallError, id="headers-null-with-length"),
    pytest.param("/malformed-fail", PluginCallError, id="bw-fail-with-malformed-message"),
    pytest.param("/huge-body", PluginCallError, id="body-len-minus-one"),
]


@pytest.mark.parametrize(("path", "error"), RELEASE_PATHS)
def test_handle_responses_are_released_exactly_once(
    probe: Probe, path: str, error: type[Exception] | None
) -> None:
    for _ in range(3):
        if error is None:
            probe.instance.handle(Request("GET", path), CancelFlag())
        else:
            with pytest.raises(error):
                probe.instance.handle(Request("GET", path), CancelFlag())
    assert probe.balance == (3, 3)


def test_hook_and_health_responses_are_released_exactly_once(probe: Probe) -> None:
    req, deny = Request("GET", "/x"), Request("GET", "/x", headers=(("x-deny", "1"),))
    fail = Request("GET", "/x", headers=(("x-fail", "1"),))
    probe.instance.health()
    probe.instance.on_request(req, CancelFlag())
    probe.instance.on_request(deny, CancelFlag())
    with pytest.raises(PluginCallError):
        probe.instance.on_request(fail, CancelFlag())
    probe.instance.on_response(req, Response(200), CancelFlag())
    probe.instance.on_response(Request("GET", "/keep"), Response(200), CancelFlag())
    assert probe.balance == (6, 6)


# ---------------------------------------------------------------------------
# Hooks and health


def test_on_request_leaving_status_zero_lets_the_request_go_on(probe: Probe) -> None:
    assert probe.instance.on_request(Request("GET", "/x"), CancelFlag()) is None


def test_on_request_setting_a_status_answers_at_once(probe: Probe) -> None:
    req = Request("GET", "/x", headers=(("x-deny", "yes"),))
    assert probe.instance.on_request(req, CancelFlag()) == Response(401, b"denied", "text/plain")


def test_on_request_failure_carries_its_message(probe: Probe) -> None:
    req = Request("GET", "/x", headers=(("x-fail", "1"),))
    with pytest.raises(PluginCallError, match="on_request returned 1: hook broke"):
        probe.instance.on_request(req, CancelFlag())


def test_on_response_leaving_status_zero_keeps_upstream(probe: Probe) -> None:
    upstream = Response(200, b"original")
    assert probe.instance.on_response(Request("GET", "/keep"), upstream, CancelFlag()) is None


def test_on_response_sees_upstream_and_may_replace_it(probe: Probe) -> None:
    upstream = Response(
        404, b"not\x00found", "application/problem+json", (("x-up", "1"), ("x-empty", ""))
    )
    resp = probe.instance.on_response(Request("GET", "/x"), upstream, CancelFlag())
    assert resp == Response(
        203, b"404|application/problem+json|x-up=1;x-empty=;|not\x00found", "text/x-replaced"
    )


def test_on_response_sees_an_empty_upstream_as_empty(probe: Probe) -> None:
    resp = probe.instance.on_response(Request("GET", "/x"), Response(204), CancelFlag())
    assert resp is not None
    assert resp.body == b"204|||"


def test_health_returns_the_plugins_report(probe: Probe) -> None:
    assert probe.instance.health() == Response(429, b'{"degraded": true}')


# ---------------------------------------------------------------------------
# Host services and threads


def test_host_log_delivers_level_and_exactly_message_len_bytes(probe: Probe) -> None:
    probe.instance.handle(Request("GET", "/log"), CancelFlag())
    assert probe.logs[-1] == (30, "warn-xyz")


def test_host_log_works_from_a_thread_the_plugin_created(probe: Probe) -> None:
    probe.instance.handle(Request("GET", "/log-thread"), CancelFlag())
    assert probe.logs[-1] == (40, "from a plugin thread")


def test_a_failing_log_sink_never_unwinds_into_the_plugin(probe_path: Path) -> None:
    def broken(level: int, message: str) -> None:
        msg = "sink broke"
        raise RuntimeError(msg)

    instance = open_library(probe_path).instantiate(b"{}", broken)
    assert instance.handle(Request("GET", "/log"), CancelFlag()).status == 200
    instance.shutdown()
