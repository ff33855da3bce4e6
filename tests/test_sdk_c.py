"""The C helpers of <backworks/sdk.h>, exercised inside a real plugin served by the binding.

KIT is one plugin whose `handle` runs the helper its path names on inputs taken from
the request: the text is the body (as a C string), the number is header `x-n` (read
without the SDK). Buffers the helpers write into are followed by canary bytes, so a
write past `cap` answers 500 instead of passing silently.
"""

from __future__ import annotations

import ctypes
import json
import locale
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from backworks.abi import (
    LOG_DEBUG,
    LOG_ERROR,
    LOG_INFO,
    LOG_WARN,
    CancelFlag,
    NativeInstance,
    Request,
    Response,
    open_library,
)
from backworks.errors import PluginCallError
from tests.conftest import BuildPlugin

KIT = r"""
/* The SDK's own allocations are counted (the kit's own are not), so a test can see
 * whether every block a helper made was freed. */
#include <stdlib.h>
static void *kit_malloc(size_t size);
static void kit_free(void *block);
#define malloc kit_malloc
#define free kit_free
#include <backworks/sdk.h>
#undef malloc
#undef free

static long sdk_blocks;

static void *kit_malloc(size_t size) {
    void *block = malloc(size);
    if (block) __atomic_add_fetch(&sdk_blocks, 1, __ATOMIC_SEQ_CST);
    return block;
}

static void kit_free(void *block) {
    if (block) __atomic_sub_fetch(&sdk_blocks, 1, __ATOMIC_SEQ_CST);
    free(block);
}

#define CANARY 16

typedef struct { const bw_host *host; } kit_state;

static int32_t kit_init(const bw_host *host, const char *config, size_t config_len,
                        void **state, bw_response *error) {
    kit_state *st = (kit_state *)calloc(1, sizeof *st);
    (void)config; (void)config_len;
    if (!st) return bw_fail(error, "out of memory");
    st->host = host;
    *state = st;
    return BW_OK;
}

static void kit_shutdown(void *state) { free(state); }

static int is(bw_str path, const char *name) { return bw_str_eq(path, name); }

/* The request body as a NUL-terminated copy. */
static char *body_text(const bw_request *req) {
    char *text = (char *)malloc(req->body_len + 1);
    if (text) {
        if (req->body_len) memcpy(text, req->body, req->body_len);
        text[req->body_len] = '\0';
    }
    return text;
}

/* Header x-n as a number, found without the SDK's helpers. */
static size_t number(const bw_request *req) {
    size_t i, n = 0, k;
    for (i = 0; i < req->headers_len; i++)
        if (req->headers[i].name.len == 3 && memcmp(req->headers[i].name.ptr, "x-n", 3) == 0)
            for (k = 0; k < req->headers[i].value.len; k++)
                n = n * 10 + (size_t)(req->headers[i].value.ptr[k] - '0');
    return n;
}

/* Answers `status` with body `data` and header x-rc: <rc>. */
static int32_t report(bw_response *resp, int32_t status, long rc, const void *data, size_t len) {
    char digits[32];
    bw_header h[1];
    snprintf(digits, sizeof digits, "%ld", rc);
    h[0].name = bw_str_from("x-rc");
    h[0].value = bw_str_from(digits);
    return bw_respond(resp, status, "application/octet-stream", h, 1, data, len);
}

static char *canaried(size_t cap) {
    char *buf = (char *)malloc(cap + CANARY);
    if (buf) memset(buf, 0x5a, cap + CANARY);
    return buf;
}

static int canary_intact(const char *buf, size_t cap) {
    size_t i;
    for (i = cap; i < cap + CANARY; i++)
        if (buf[i] != 0x5a) return 0;
    return 1;
}

static int32_t finish(bw_response *resp, char *text, char *buf, size_t cap, int32_t status,
                      long rc) {
    int32_t out;
    if (!canary_intact(buf, cap)) out = bw_respond_text(resp, 500, "wrote past cap");
    else out = report(resp, status, rc, buf, cap ? strlen(buf) : 0);
    free(text);
    free(buf);
    return out;
}

static int32_t kit_handle(void *state, const bw_request *req, bw_response *resp) {
    kit_state *st = (kit_state *)state;
    size_t n = number(req);
    char *text = body_text(req), *buf;
    if (!text) return BW_FAIL;

    if (is(req->path, "/query")) {
        long rc;
        if (!(buf = canaried(n))) return BW_FAIL;
        rc = bw_query_get(req, text, buf, n);
        return finish(resp, text, buf, n, rc < 0 ? 404 : 200, rc);
    }
    if (is(req->path, "/quote")) {
        size_t sized = bw_json_quote(text, NULL, 0), rc;
        if (!(buf = canaried(n))) return BW_FAIL;
        rc = bw_json_quote(text, buf, n);
        return finish(resp, text, buf, n, rc == sized ? 200 : 500, (long)rc);
    }
    if (is(req->path, "/str-copy")) {
        bw_str s;
        const char *got;
        s.ptr = text; s.len = req->body_len;
        if (!(buf = canaried(n))) return BW_FAIL;
        got = bw_str_copy(s, buf, n);
        return finish(resp, text, buf, n, got == buf ? 200 : 500, bw_str_eq(s, "hello"));
    }
    if (is(req->path, "/header") || is(req->path, "/param")) {
        const bw_str *v = is(req->path, "/header") ? bw_header_get(req, text)
                                                   : bw_param_get(req, text);
        free(text);
        return v ? report(resp, 200, (long)v->len, v->ptr, v->len) : report(resp, 404, -1, "", 0);
    }
    if (is(req->path, "/error")) {
        int32_t rc = bw_respond_error(resp, (int32_t)n, text);
        free(text);
        return rc;
    }
    if (is(req->path, "/respond")) {
        /* The request's own headers and body: the helper must copy them all. */
        free(text);
        return bw_respond(resp, 201, "application/x-test", req->headers, req->headers_len,
                          req->body, req->body_len);
    }
    if (is(req->path, "/json") || is(req->path, "/text") || is(req->path, "/fail")) {
        int32_t rc = is(req->path, "/json")   ? bw_respond_json(resp, 200, text)
                     : is(req->path, "/text") ? bw_respond_text(resp, 200, text)
                                              : bw_fail(resp, text);
        free(text);
        return rc;
    }
    free(text);
    if (is(req->path, "/static"))
        return bw_respond_static(resp, 202, "image/x-test", "\0\1\2static", 9);
    if (is(req->path, "/logf")) {
        char *line = body_text(req);
        if (!line) return BW_FAIL;
        bw_logf(st->host, (int32_t)n, "%s|%d", line, 42);
        free(line);
        return bw_respond_json(resp, 200, "{}");
    }
    if (is(req->path, "/log-macros")) {
        bw_log_debug(st->host, "debug %d", 1);
        bw_log_info(st->host, "info %s", "two");
        bw_log_warn(st->host, "warn %c", '3');
        bw_log_error(st->host, "error %.1f", 4.0);
        return bw_respond_json(resp, 200, "{}");
    }
    if (is(req->path, "/blocks"))
        return report(resp, 200, __atomic_load_n(&sdk_blocks, __ATOMIC_SEQ_CST), "", 0);
    if (is(req->path, "/answer-then-fail")) {
        bw_respond_json(resp, 200, "{\"first\": \"answer\"}");
        return bw_fail(resp, "then it failed");
    }
    if (is(req->path, "/answer-then-static")) {
        bw_respond_json(resp, 200, "{\"first\": \"answer\"}");
        return bw_respond_static(resp, 200, "text/plain", "static", 6);
    }
    if (is(req->path, "/re-answer")) {
        /* The second answer copies out of the first, which it then releases. */
        bw_header h[1];
        h[0].name = bw_str_from("x-first"); h[0].value = bw_str_from("kept");
        bw_respond(resp, 200, NULL, h, 1, "{\"first\": \"answer, long enough\"}", 32);
        return bw_respond(resp, 299, "text/x-again", resp->headers, resp->headers_len,
                          resp->body, resp->body_len);
    }
    if (is(req->path, "/cancelled"))
        return bw_respond_json(resp, 200, bw_is_cancelled(req) ? "true" : "false");
    if (is(req->path, "/str-from-null"))
        return report(resp, 200, (long)bw_str_from(NULL).len, "", 0);
    if (is(req->path, "/overflow")) {
        /* Lengths whose sum wraps around SIZE_MAX: bw_respond must refuse, not copy. */
        bw_header h[1];
        int32_t a, b, c;
        h[0].name = bw_str_from("x"); h[0].value = bw_str_from("y");
        a = bw_respond(resp, 200, "text/plain", NULL, 0, "x", (size_t)-1 - 4);
        b = bw_respond(resp, 200, NULL, h, (size_t)-1 / sizeof(bw_header) + 2, "x", 1);
        h[0].name.len = (size_t)-1 - 2;
        c = bw_respond(resp, 200, NULL, h, 1, "x", 8);
        return report(resp, 200, a * 100 + b * 10 + c, "", 0);
    }
    return bw_respond_error(resp, 404, "no such helper");
}

BW_DEFINE_PLUGIN(.name = "sdkkit", .version = "0.0.1", .description = "exercises sdk.h",
                 .flags = BW_FLAG_THREAD_SAFE, .init = kit_init, .handle = kit_handle,
                 .shutdown = kit_shutdown)
"""

Logs = list[tuple[int, str]]


@pytest.fixture
def kit_path(build_plugin: BuildPlugin) -> Path:
    return build_plugin(KIT, name="sdkkit")


@pytest.fixture
def logs() -> Logs:
    return []


@pytest.fixture
def kit(kit_path: Path, logs: Logs) -> Iterator[NativeInstance]:
    instance = open_library(kit_path).instantiate(b"{}", lambda lvl, msg: logs.append((lvl, msg)))
    yield instance
    instance.shutdown()


def call(
    kit: NativeInstance,
    path: str,
    text: str | bytes = b"",
    n: int | None = None,
    *,
    query: str = "",
    params: tuple[tuple[str, str], ...] = (),
    headers: tuple[tuple[str, str], ...] = (),
) -> Response:
    body = text.encode() if isinstance(text, str) else text
    extra = (("x-n", str(n)),) if n is not None else ()
    req = Request("POST", path, query=query, params=params, headers=(*headers, *extra), body=body)
    resp = kit.handle(req, CancelFlag())
    assert resp.body != b"wrote past cap"
    return resp


def rc(resp: Response) -> int:
    return int(dict(resp.headers)["x-rc"])


# ---------------------------------------------------------------------------
# bw_query_get

QUERY_CASES = [
    pytest.param("name=Ada", "name", 3, b"Ada", id="plain"),
    pytest.param("a=1&name=J%C3%BCrgen+M%2b&b=2", "name", 10, "Jürgen M+".encode(), id="decoded"),
    pytest.param("name=a+b+", "name", 4, b"a b ", id="plus-is-space"),
    pytest.param("name=%zz%4", "name", 5, b"%zz%4", id="bad-escapes-kept"),
    pytest.param("name=%41%", "name", 2, b"A%", id="escape-at-end"),
    pytest.param("name2=x&xname=y&name=z", "name", 1, b"z", id="whole-key-only"),
    pytest.param("name=1&name=2", "name", 1, b"1", id="first-wins"),
    pytest.param("&&name=v&", "name", 1, b"v", id="empty-pairs"),
    pytest.param("=x&name=ok", "name", 2, b"ok", id="empty-key"),
    pytest.param("name=&a=1", "name", 0, b"", id="empty-value"),
    pytest.param("a=1&name", "name", 0, b"", id="no-equals-last"),
    pytest.param("name&a=1", "name", 0, b"", id="no-equals-first"),
    pytest.param("name=a=b", "name", 3, b"a=b", id="equals-in-value"),
    pytest.param("a=1", "name", -1, b"", id="missing"),
    pytest.param("names=1", "name", -1, b"", id="longer-key-missing"),
    pytest.param("", "name", -1, b"", id="empty-query"),
    pytest.param("=", "", 0, b"", id="empty-name-matches-empty-key"),
]


@pytest.mark.parametrize(("query", "key", "expected_rc", "value"), QUERY_CASES)
def test_bw_query_get_finds_and_percent_decodes(
    kit: NativeInstance, query: str, key: str, expected_rc: int, value: bytes
) -> None:
    resp = call(kit, "/query", key, 64, query=query)
    assert (resp.status, rc(resp), resp.body) == (
        404 if expected_rc < 0 else 200,
        expected_rc,
        value,
    )


@pytest.mark.parametrize(
    ("cap", "value"),
    [(0, b""), (1, b""), (2, b"H"), (6, b"Hello"), (11, b"Hello Worl"), (12, None)],
)
def test_bw_query_get_truncates_to_cap_and_returns_the_full_length(
    kit: NativeInstance, cap: int, value: bytes | None
) -> None:
    resp = call(kit, "/query", "q", cap, query="q=Hello+World")
    assert rc(resp) == 11
    assert resp.body == (value if value is not None else b"Hello World")


# ---------------------------------------------------------------------------
# bw_header_get and bw_param_get

HEADERS = (("x-api-key", "k1"), ("content-type", "text/plain"), ("x-empty", ""))


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("x-api-key", b"k1"),
        ("X-API-Key", b"k1"),
        ("CONTENT-TYPE", b"text/plain"),
        ("x-empty", b""),
        ("x-api", None),
        ("x-api-key-2", None),
        ("", None),
    ],
)
def test_bw_header_get_matches_names_in_any_case(
    kit: NativeInstance, name: str, value: bytes | None
) -> None:
    resp = call(kit, "/header", name, headers=HEADERS)
    assert (resp.status, resp.body) == ((200, value) if value is not None else (404, b""))


@pytest.mark.parametrize(
    ("name", "value"),
    [("city", "Zürich".encode()), ("City", b"upper"), ("CITY", None), ("cit", None)],
)
def test_bw_param_get_matches_names_exactly(
    kit: NativeInstance, name: str, value: bytes | None
) -> None:
    resp = call(kit, "/param", name, params=(("city", "Zürich"), ("City", "upper")))
    assert (resp.status, resp.body) == ((200, value) if value is not None else (404, b""))


def test_bw_header_get_ignores_the_hosts_locale(
    kit: NativeInstance, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """tolower() in a Turkish locale leaves 'I' alone: header names fold as ASCII."""
    # The locale is compiled for this test (glibc reads LOCPATH at setlocale time),
    # so it runs on machines that ship no Turkish locale.
    subprocess.run(
        ["localedef", "-i", "tr_TR", "-f", "ISO-8859-9", str(tmp_path / "tr_TR.ISO-8859-9")],
        check=True,
        capture_output=True,
    )
    monkeypatch.setenv("LOCPATH", str(tmp_path))
    previous = locale.setlocale(locale.LC_CTYPE)
    locale.setlocale(locale.LC_CTYPE, "tr_TR.ISO-8859-9")
    try:
        resp = call(kit, "/header", "X-API-KEY", headers=HEADERS)
    finally:
        locale.setlocale(locale.LC_CTYPE, previous)
    assert (resp.status, resp.body) == (200, b"k1")


def test_bw_header_get_finds_nothing_in_a_request_without_headers(kit: NativeInstance) -> None:
    resp = kit.handle(Request("GET", "/header", body=b"x-any"), CancelFlag())
    assert resp.status == 404


# ---------------------------------------------------------------------------
# bw_json_quote and bw_respond_error

TEXTS = [
    pytest.param("plain", id="plain"),
    pytest.param("", id="empty"),
    pytest.param('say "hi"', id="quotes"),
    pytest.param("back\\slash\\", id="backslash"),
    pytest.param("line\nbreak\ttab\rreturn\bback\fform", id="whitespace-controls"),
    pytest.param("".join(chr(c) for c in range(1, 32)), id="every-control"),
    pytest.param("\x7f del and </script>", id="del-and-slash"),
    pytest.param("ünïcödé € 😀", id="utf-8"),
]


@pytest.mark.parametrize("text", TEXTS)
def test_bw_json_quote_makes_a_json_string_literal(kit: NativeInstance, text: str) -> None:
    resp = call(kit, "/quote", text, 4096)
    assert resp.status == 200  # the sizing call (cap 0) agrees with the real one
    assert rc(resp) == len(resp.body)
    assert json.loads(resp.body) == text


@pytest.mark.parametrize(
    ("text", "quoted"),
    [
        ('a"b', b'"a\\"b"'),
        ("a\\b", b'"a\\\\b"'),
        ("a\nb", b'"a\\nb"'),
        ("\x01\x1f", b'"\\u0001\\u001f"'),
    ],
)
def test_bw_json_quote_uses_the_shortest_common_escapes(
    kit: NativeInstance, text: str, quoted: bytes
) -> None:
    assert call(kit, "/quote", text, 64).body == quoted


@pytest.mark.parametrize(
    ("cap", "out"), [(0, b""), (1, b""), (3, b'"a'), (6, b'"a\\"b'), (7, None)]
)
def test_bw_json_quote_truncates_like_snprintf(
    kit: NativeInstance, cap: int, out: bytes | None
) -> None:
    resp = call(kit, "/quote", 'a"b', cap)
    assert rc(resp) == 6
    assert resp.body == (out if out is not None else b'"a\\"b"')


@pytest.mark.parametrize("text", [*TEXTS, pytest.param("x" * 5000, id="long")])
def test_bw_respond_error_makes_valid_json(kit: NativeInstance, text: str) -> None:
    resp = call(kit, "/error", text, 422)
    assert resp.status == 422
    assert resp.content_type == ""  # empty means application/json
    assert json.loads(resp.body) == {"error": text}


# ---------------------------------------------------------------------------
# Building responses


def test_bw_respond_copies_headers_content_type_and_body(kit: NativeInstance) -> None:
    headers = (("x-one", "1"), ("x-empty", ""), ("x-utf8", "ünï"), ("set-cookie", "a=b; Path=/"))
    body = b"\x00binary\xffbody\x00"
    resp = kit.handle(Request("POST", "/respond", headers=headers, body=body), CancelFlag())
    assert resp == Response(201, body, "application/x-test", headers)


def test_bw_respond_without_headers_or_body(kit: NativeInstance) -> None:
    assert kit.handle(Request("POST", "/respond"), CancelFlag()) == Response(
        201, b"", "application/x-test"
    )


def test_bw_respond_refuses_lengths_that_overflow_instead_of_copying(kit_path: Path) -> None:
    """Each wrapped size would make a small block and a huge memcpy: a crash.

    Run in a child process, so a regression fails this test instead of killing the run.
    """
    script = (
        "import sys\n"
        "from backworks.abi import CancelFlag, Request, open_library\n"
        "kit = open_library(sys.argv[1]).instantiate(b'{}', lambda level, msg: None)\n"
        "resp = kit.handle(Request('GET', '/overflow'), CancelFlag())\n"
        "print(dict(resp.headers)['x-rc'])\n"
    )
    child = subprocess.run(
        [sys.executable, "-c", script, str(kit_path)], capture_output=True, text=True, timeout=60
    )
    assert child.returncode == 0, f"the plugin crashed ({child.returncode}): {child.stderr}"
    assert child.stdout.strip() == "111"  # all three calls returned BW_FAIL


def blocks(kit: NativeInstance) -> int:
    """How many blocks the SDK's helpers hold, not counting this answer's own."""
    return rc(kit.handle(Request("GET", "/blocks"), CancelFlag()))


def test_every_block_the_helpers_make_is_freed_by_release(kit: NativeInstance) -> None:
    call(kit, "/error", "x" * 100, 400)
    call(kit, "/json", "{}")
    call(kit, "/quote", "q", 10)
    with pytest.raises(PluginCallError):
        call(kit, "/fail", "no")
    assert blocks(kit) == 0


def test_a_second_answer_releases_the_first(kit: NativeInstance) -> None:
    """`bw_respond_json(...)` then `return bw_fail(...)` must not leak the first block."""
    with pytest.raises(PluginCallError, match="then it failed"):
        call(kit, "/answer-then-fail")
    assert blocks(kit) == 0
    assert call(kit, "/answer-then-static") == Response(200, b"static", "text/plain")
    assert blocks(kit) == 0


def test_a_second_answer_may_copy_out_of_the_first(kit: NativeInstance) -> None:
    assert call(kit, "/re-answer") == Response(
        299, b'{"first": "answer, long enough"}', "text/x-again", (("x-first", "kept"),)
    )
    assert blocks(kit) == 0


def test_bw_respond_json_text_and_static(kit: NativeInstance) -> None:
    assert call(kit, "/json", '{"a": 1}') == Response(200, b'{"a": 1}')
    assert call(kit, "/text", "hi") == Response(200, b"hi", "text/plain; charset=utf-8")
    assert call(kit, "/static") == Response(202, b"\x00\x01\x02static", "image/x-test")


def test_bw_fail_puts_its_message_in_the_call_error(kit: NativeInstance) -> None:
    with pytest.raises(PluginCallError) as e:
        call(kit, "/fail", "database unreachable")
    assert e.value.message == "handle returned 1: database unreachable"


# ---------------------------------------------------------------------------
# Strings, cancellation, logging


@pytest.mark.parametrize(
    ("text", "cap", "out", "equal"),
    [
        ("hello", 64, b"hello", 1),
        ("hello", 6, b"hello", 1),
        ("hello", 5, b"hell", 1),
        ("hello", 1, b"", 1),
        ("hello", 0, b"", 1),
        ("hell", 64, b"hell", 0),
        ("hello!", 64, b"hello!", 0),
        ("", 64, b"", 0),
    ],
)
def test_bw_str_copy_truncates_and_bw_str_eq_compares_whole_strings(
    kit: NativeInstance, text: str, cap: int, out: bytes, equal: int
) -> None:
    resp = call(kit, "/str-copy", text, cap)
    assert (resp.status, resp.body, rc(resp)) == (200, out, equal)


def test_bw_str_from_null_is_empty(kit: NativeInstance) -> None:
    assert rc(call(kit, "/str-from-null")) == 0


@pytest.mark.parametrize("set_flag", [False, True])
def test_bw_is_cancelled_reads_the_hosts_flag(kit: NativeInstance, set_flag: bool) -> None:
    cancel = CancelFlag()
    if set_flag:
        cancel.set()
    resp = kit.handle(Request("GET", "/cancelled"), cancel)
    assert json.loads(resp.body) is set_flag


def test_bw_logf_formats_into_the_host_log(kit: NativeInstance, logs: Logs) -> None:
    call(kit, "/logf", "disk at 93%", LOG_WARN)
    assert logs == [(LOG_WARN, "disk at 93%|42")]


def test_bw_logf_cuts_lines_over_1_kib(kit: NativeInstance, logs: Logs) -> None:
    call(kit, "/logf", "y" * 3000, LOG_INFO)
    assert logs == [(LOG_INFO, "y" * 1023)]


def test_bw_log_macros_use_their_levels(kit: NativeInstance, logs: Logs) -> None:
    call(kit, "/log-macros")
    assert logs == [
        (LOG_DEBUG, "debug 1"),
        (LOG_INFO, "info two"),
        (LOG_WARN, "warn 3"),
        (LOG_ERROR, "error 4.0"),
    ]


# ---------------------------------------------------------------------------
# BW_DEFINE_PLUGIN


@pytest.mark.parametrize(
    ("host_version", "served"), [(0x00010000, True), (0x00010007, True), (0x00020000, False)]
)
def test_bw_define_plugin_declines_hosts_of_another_major(
    kit_path: Path, host_version: int, served: bool
) -> None:
    entry = ctypes.CDLL(str(kit_path)).backworks_plugin_entry
    entry.restype = ctypes.c_void_p
    entry.argtypes = [ctypes.c_uint32]
    assert (entry(host_version) is not None) is served


def test_bw_define_plugin_fills_abi_version_and_struct_size(kit_path: Path) -> None:
    info = open_library(kit_path).info
    assert (info.name, info.version, info.abi, info.flag_names) == (
        "sdkkit",
        "0.0.1",
        "1.0",
        ["thread_safe"],
    )
