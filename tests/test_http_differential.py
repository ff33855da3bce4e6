"""Generated request bytes against both engines, with h11 as the framing oracle.

Hypothesis draws pipelines of one to three requests (methods, targets, versions, Host
shapes, header fields, framings: Content-Length, chunked, both, Transfer-Encoding
variants, bare LF, obs-fold, upgrade headers, Expect) and splits them into writes. Each
case goes to a server of each engine (`server.engine: lane` and `aiohttp`, one config):

- both engines must give the same answers (status, body, `Connection`) and the same
  connection fate (closed or kept);
- h11 (pure Python, no code shared with llhttp or aiohttp) reads the same bytes. Every
  answer the server gives to a request must answer the request h11 read at that place:
  same method, same query, same body length (the plugin echoes what it got). The
  server may be stricter than h11 (a refusal, then the close, and nothing after it),
  never laxer: where h11 rejects the framing, the server answers no request h11 did not
  read. Where both accept all, every request is answered and the fate is h11's.

Most targets are the kit's echo route with the request's index in the query, so an
answer says which request it answers: a body read as a request (request smuggling)
shows as an answer h11 never read, or as a body that went missing.

`make test` runs a bounded, derandomized set; `make fuzz` runs BACKWORKS_FUZZ_EXAMPLES
cases with fresh randomness.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import re
import select
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any, NamedTuple

import h11
import pytest
import yaml
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from backworks.config import load_config
from backworks.server.app import create_app
from tests.cbuild import compile_library
from tests.serving import KIT, LaneTestServer
from tests.wire import Answer, parse

FUZZ_EXAMPLES = int(os.environ.get("BACKWORKS_FUZZ_EXAMPLES", "0"))
ENGINES = ("lane", "aiohttp")
CONFIG: dict[str, Any] = {
    "plugin_discovery": {"enabled": True, "directories": ["./plugins"]},
    "endpoints": {
        "/static": {"method": "GET", "response": {"status": 200, "body": '{"s": 1}'}},
        "/echo": {"methods": ["POST", "PUT"], "runtime": {"type": "plugin", "handler": "kit"}},
    },
    # Short timeouts: a case that leaves a request unfinished gets its 408 quickly.
    "server": {"max_body_bytes": 4096, "header_timeout_ms": 400, "body_timeout_ms": 400},
    "logging": {"level": "warning"},
}
# The verdicts of the edge: a refusal ends the connection, and nothing follows it.
REFUSALS = {
    "bad_request",
    "request_timeout",
    "payload_too_large",
    "expectation_failed",
    "header_fields_too_large",
    "not_implemented",
    "http_version_not_supported",
}
SENTINEL = b"GET /static HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
READ_TIMEOUT_S = 3.0  # well past the 400 ms timeouts
LINGER_S = 0.2  # after a complete answer on a connection left open


# --- the servers: both engines, one config, on a loop of their own --------------------


@pytest.fixture(scope="module")
def ports(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, int]]:
    """engine -> port: the same config served by each engine, for every example."""
    folder = tmp_path_factory.mktemp("differential")
    compile_library(
        KIT,
        folder / "plugins" / "libkit.so",
        cache=tmp_path_factory.mktemp("cbuild"),
        extra_flags=('-DKIT_NAME="kit"',),
    )
    before = os.environ.get("BACKWORKS_CACHE_DIR")
    os.environ["BACKWORKS_CACHE_DIR"] = str(folder / "cache")
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    async def start(engine: str) -> LaneTestServer:
        config = json.loads(json.dumps(CONFIG))
        config["server"]["engine"] = engine
        path = folder / f"{engine}.yaml"
        path.write_text(yaml.safe_dump(config))
        server = LaneTestServer(create_app(load_config(path)))
        await server.start_server()
        return server

    servers = {e: asyncio.run_coroutine_threadsafe(start(e), loop).result(60) for e in ENGINES}
    try:
        yield {e: server.port or 0 for e, server in servers.items()}
    finally:
        for server in servers.values():
            asyncio.run_coroutine_threadsafe(server.close(), loop).result(60)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
        if before is None:
            os.environ.pop("BACKWORKS_CACHE_DIR", None)
        else:
            os.environ["BACKWORKS_CACHE_DIR"] = before


# --- the generated requests ---------------------------------------------------------

# Repetition weights the draw: mostly requests the server answers, some it must refuse.
METHODS = ["POST"] * 4 + ["GET"] * 3 + ["PUT", "DELETE", "OPTIONS", "CONNECT", "get", "G\x00T"]
TARGETS = (
    ["/plugins/kit/echo?i={i}"] * 5
    + ["/echo?i={i}"] * 3
    + ["http://t/plugins/kit/echo?i={i}", "/static", "/nowhere", "*", "/echo?i={i}#f"]
    + ["http://t:99999/echo", "http://t;x/echo"]
)
VERSIONS = [" HTTP/1.1"] * 8 + [" HTTP/1.0", " HTTP/2.0", " HTTP/1.2", ""]
HOSTS = [["Host: t"]] * 8 + [[], ["Host: t", "Host: u"]]
FIELDS = [
    "X-A: 1",
    "Connection: close",
    "Connection: keep-alive",
    "Connection: Upgrade\r\nUpgrade: x",
    "Upgrade: websocket\r\nConnection: Upgrade",
    "Upgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\nHTTP2-Settings: AAMAAABkAAQ",
    "Expect: 100-continue",
    "Expect: 100-nope",
    "X-Ws: v \t",
    "X-Fold: a\r\n b",
    "Content-Type: text/plain",
    "Content-Type: text/plain\r\nContent-Type: a/b",
    "Transfer-Encoding: chunked",
    "Content-Length: 0",
]
FRAMINGS = (
    ["none"] * 3
    + ["length"] * 5
    + ["chunked"] * 3
    + ["length short", "length long", "chunked trailer", "chunked extension"]
    + ["length and chunked", "gzip, chunked", "two TE fields", "Chunked", "identity"]
    + ["bad chunk size", "chunk size overflow", "bare LF chunks"]
)
# A body that is itself a request: read as one, it would be smuggled past the front.
SMUGGLED = b"GET /plugins/kit/echo?i=99 HTTP/1.1\r\nHost: t\r\n\r\n"


def chunked(body: bytes, eol: bytes = b"\r\n", last: bytes = b"0\r\n\r\n") -> bytes:
    half = len(body) // 2
    parts = [p for p in (body[:half], body[half:]) if p]
    return b"".join(b"%x" % len(p) + eol + p + eol for p in parts) + last


def framed(framing: str, body: bytes) -> tuple[list[str], bytes]:
    """The framing fields and the bytes after the head, for `body` framed as `framing`."""
    te = "Transfer-Encoding: chunked"
    cl = f"Content-Length: {len(body)}"
    return {
        "none": ([], b""),
        "length": ([cl], body),
        "length short": ([f"Content-Length: {len(body) // 2}"], body),
        "length long": ([f"Content-Length: {len(body) + 5}"], body),
        "chunked": ([te], chunked(body)),
        "chunked trailer": ([te], chunked(body, last=b"0\r\nX-Trailer: t\r\n\r\n")),
        "chunked extension": ([te], chunked(body).replace(b"\r\n", b";e=1\r\n", 1)),
        "length and chunked": ([cl, te], chunked(body)),
        "gzip, chunked": (["Transfer-Encoding: gzip, chunked"], chunked(body)),
        "two TE fields": (["Transfer-Encoding: gzip", te], chunked(body)),
        "Chunked": (["Transfer-Encoding: Chunked"], chunked(body)),
        "identity": (["Transfer-Encoding: identity", cl], body),
        "bad chunk size": ([te], b"0x4\r\nwiki\r\n0\r\n\r\n"),
        "chunk size overflow": ([te], b"10000000000000004\r\nwiki\r\n0\r\n\r\n"),
        "bare LF chunks": ([te], chunked(body, eol=b"\n", last=b"0\n\n")),
    }[framing]


@st.composite
def one_request(draw: st.DrawFn, index: int) -> bytes:
    method = draw(st.sampled_from(METHODS))
    target = draw(st.sampled_from(TARGETS)).format(i=index)
    version = draw(st.sampled_from(VERSIONS))
    fields = draw(st.sampled_from(HOSTS)) + draw(
        st.lists(st.sampled_from(FIELDS), max_size=3, unique=True)
    )
    body = draw(st.one_of(st.binary(max_size=40), st.just(SMUGGLED)))
    framing_fields, rest = framed(draw(st.sampled_from(FRAMINGS)), body)
    eol = draw(st.sampled_from(["\r\n"] * 9 + ["\n"]))
    head = eol.join([f"{method} {target}{version}", *fields, *framing_fields]) + eol + eol
    return head.encode("latin-1") + rest


@st.composite
def cases(draw: st.DrawFn) -> list[bytes]:
    """A pipeline of one to three requests, cut into one to four writes."""
    count = draw(st.integers(1, 3))
    sent = b"".join(draw(one_request(i)) for i in range(count))
    cuts = draw(st.lists(st.integers(1, len(sent) - 1), max_size=3, unique=True))
    bounds = [0, *sorted(cuts), len(sent)]
    return [sent[a:b] for a, b in itertools.pairwise(bounds)]


# --- h11's reading of the same bytes ------------------------------------------------


class Seen(NamedTuple):
    """One request as h11 read it."""

    method: bytes
    target: bytes
    body: bytes


class Reading(NamedTuple):
    """h11's reading: the requests it read whole, whether it rejected what came next,
    whether the connection ends after them, and whether a next request may follow."""

    requests: list[Seen]
    rejected: bool
    ends: bool
    reusable: bool


def h11_reading(data: bytes) -> Reading:
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=65536)
    conn.receive_data(data)
    requests: list[Seen] = []
    current: Request | None = None
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError:
            return Reading(requests, rejected=True, ends=True, reusable=False)
        if isinstance(event, h11.Request):
            current = Request(event)
        elif isinstance(event, h11.Data) and current is not None:
            current.body += event.data
        elif isinstance(event, h11.EndOfMessage) and current is not None:
            requests.append(Seen(current.method, current.target, current.body))
            # Any answer will do for h11 to read on; 501 refuses a CONNECT's tunnel.
            status = 501 if current.method == b"CONNECT" else 200
            conn.send(h11.Response(status_code=status, headers=[("Content-Length", "0")]))
            conn.send(h11.EndOfMessage())
            if conn.our_state is h11.MUST_CLOSE:
                if not current.keeps_http_1_0_alive:
                    return Reading(requests, rejected=False, ends=True, reusable=False)
                # h11 closes every HTTP/1.0 connection; the server honours keep-alive
                # (as it must): read on from where h11 stopped, afresh.
                rest, _ = conn.trailing_data
                conn = h11.Connection(h11.SERVER, max_incomplete_event_size=65536)
                conn.receive_data(rest)
            else:
                conn.start_next_cycle()
            current = None
        else:
            idle = conn.their_state is h11.IDLE and not conn.trailing_data[0]
            return Reading(requests, rejected=False, ends=False, reusable=idle)


class Request:
    """A request h11 is reading: its head, and the body so far."""

    def __init__(self, event: h11.Request) -> None:
        self.method = bytes(event.method)
        self.target = bytes(event.target)
        self.body = b""
        connection = b",".join(v for k, v in event.headers if k == b"connection").lower()
        self.keeps_http_1_0_alive = (
            event.http_version == b"1.0"
            and b"keep-alive" in connection
            and b"close" not in connection
        )


# --- what the server wrote ------------------------------------------------------------


class Outcome(NamedTuple):
    """What one engine wrote back, and how the connection ended."""

    answers: list[Answer]
    fate: str  # "closed", "open" (after its last answer) or "reset"


def talk(port: int, writes: list[bytes]) -> Outcome:
    sock = socket.create_connection(("127.0.0.1", port), timeout=READ_TIMEOUT_S)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    data = b""
    fate = "open"
    with sock:
        try:
            for i, chunk in enumerate(writes):
                if i:
                    time.sleep(0.003)  # the client's pace: each write its own read
                sock.sendall(chunk)
        except OSError:
            pass  # refused and closed before all was sent: read what came back
        deadline = time.monotonic() + READ_TIMEOUT_S
        while time.monotonic() < deadline:
            answers, rest = parse(data)
            wait = LINGER_S if answers and not rest else deadline - time.monotonic()
            if not select.select([sock], [], [], max(wait, 0))[0]:
                break
            try:
                part = sock.recv(65536)
            except ConnectionResetError:
                fate = "reset"
                break
            if not part:
                fate = "closed"
                break
            data += part
    return Outcome(parse(data)[0], fate)


_REQUEST_ID = re.compile(rb'("request_id": ")[^"]*(")')


def comparable(outcome: Outcome) -> tuple[object, ...]:
    answers = [
        (a.status, _REQUEST_ID.sub(rb"\1<id>\2", a.body), a.header("Connection"))
        for a in outcome.answers
    ]
    return (answers, outcome.fate)


def refusal(answer: Answer) -> bool:
    try:
        return json.loads(answer.body)["error"]["code"] in REFUSALS
    except (ValueError, KeyError, TypeError):
        return False


def echo(answer: Answer) -> dict[str, Any] | None:
    """The kit's echo of the request this answers, if it is one."""
    try:
        seen = json.loads(answer.body)
    except ValueError:
        return None
    return seen if isinstance(seen, dict) and "body_len" in seen else None


def answers_what_h11_read(engine: str, outcome: Outcome, reading: Reading) -> None:
    """Up to a refusal, the answer at each place answers the request h11 read there
    (same method, query and body length); where h11 read every byte as requests, no
    answer answers a request it never read: that would be a request smuggled in."""
    for i, answer in enumerate(outcome.answers):
        if refusal(answer):
            return
        if i >= len(reading.requests):
            assert reading.rejected, (
                f"{engine} answered request {i}; h11 read {len(reading.requests)}: {answer}"
            )
            return
        seen = echo(answer)
        if seen is None:
            continue
        wanted = reading.requests[i]
        assert seen["method"].encode("latin-1") == wanted.method, (engine, i, seen, wanted)
        query = wanted.target.partition(b"?")[2].partition(b"#")[0]
        assert seen["query"].encode("latin-1") == query, (engine, i, seen, wanted)
        assert seen["body_len"] == len(wanted.body), (
            f"{engine}: request {i}'s body is {len(wanted.body)} bytes to h11, "
            f"{seen['body_len']} to the plugin"
        )


def never_laxer_than_h11(engine: str, outcome: Outcome, reading: Reading) -> None:
    """A refusal is the last answer and closes the connection. Where h11 rejects the
    framing, no request past what it read is answered; where it accepts all, every
    request is answered and the connection ends as h11 says it does."""
    answers = outcome.answers
    for i, answer in enumerate(answers):
        if refusal(answer):
            assert i == len(answers) - 1, f"{engine}: answers after a refusal: {answers}"
            assert outcome.fate == "closed", f"{engine}: {outcome.fate} after {answer.status}"
            return
        assert i < len(reading.requests), (
            f"{engine} answered request {i}, past where h11 rejected the framing: {answer}"
        )
    if not reading.rejected:
        assert len(answers) == len(reading.requests), f"{engine}: {answers}"
        assert (outcome.fate == "closed") == reading.ends, f"{engine}: {outcome.fate}"


def run(ports: dict[str, int], writes: list[bytes]) -> tuple[Reading, dict[str, Outcome]]:
    """h11's reading of `writes` and what each engine answered to them."""
    reading = h11_reading(b"".join(writes))
    if reading.reusable:
        # Ask for the close: the answers end with EOF instead of a wait.
        writes = [*writes, SENTINEL]
        reading = h11_reading(b"".join(writes))
    note(f"writes: {writes!r}")
    note(f"h11: {reading}")
    outcomes = {engine: talk(port, writes) for engine, port in ports.items()}
    for engine, outcome in outcomes.items():
        note(f"{engine}: {outcome}")
    return reading, outcomes


SETTINGS = settings(
    max_examples=FUZZ_EXAMPLES or 150,
    deadline=None,
    derandomize=not FUZZ_EXAMPLES,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# Three properties, three tests: each gets the whole budget, so a bug that breaks one
# cannot hide another (hypothesis stops looking soon after its first failure).


@SETTINGS
@given(writes=cases())
def test_no_plugin_gets_a_request_other_than_h11_reads(
    ports: dict[str, int], writes: list[bytes]
) -> None:
    reading, outcomes = run(ports, writes)
    for engine, outcome in outcomes.items():
        answers_what_h11_read(engine, outcome, reading)


@SETTINGS
@given(writes=cases())
def test_no_engine_is_laxer_than_h11_or_ends_a_connection_otherwise(
    ports: dict[str, int], writes: list[bytes]
) -> None:
    reading, outcomes = run(ports, writes)
    for engine, outcome in outcomes.items():
        never_laxer_than_h11(engine, outcome, reading)


@SETTINGS
@given(writes=cases())
def test_both_engines_answer_generated_bytes_alike(
    ports: dict[str, int], writes: list[bytes]
) -> None:
    _, outcomes = run(ports, writes)
    assert comparable(outcomes["lane"]) == comparable(outcomes["aiohttp"])


# --- cases the generator must keep covering, and the "same verdict on both" ----


@pytest.mark.parametrize(
    "writes",
    [
        [b"GET http://t;x/plugins/kit/echo?i=0 HTTP/1.1\r\nHost: t\r\n\r\n"],
        [b"OPTIONS * HTTP/1.1\r\nHost: t\r\n\r\n"],
        [
            b"POST /echo?i=0 HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: x\r\n"
            b"Content-Length: %d\r\n\r\n" % len(SMUGGLED) + SMUGGLED + SENTINEL
        ],
        [
            b"CONNECT /echo HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % len(SMUGGLED)
            + SMUGGLED
        ],
    ],
    ids=["absolute-form yarl cannot parse", "OPTIONS *", "upgrade with a body", "CONNECT"],
)
def test_the_same_verdict_on_both_engines(ports: dict[str, int], writes: list[bytes]) -> None:
    reading = h11_reading(b"".join(writes))
    outcomes = {engine: talk(port, writes) for engine, port in ports.items()}
    for engine, outcome in outcomes.items():
        answers_what_h11_read(engine, outcome, reading)
        never_laxer_than_h11(engine, outcome, reading)
    assert comparable(outcomes["lane"]) == comparable(outcomes["aiohttp"]), outcomes
