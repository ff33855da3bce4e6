"""One hostile connection against a real `backworks serve` process, on each engine.

What issue 18 asks of every engine that serves plugin routes: a client that never ends
its head, trickles its body, floods a pipeline it never reads, or half-closes its
socket gets a clear answer (or a clean close), cannot raise the server's memory by more
than a bounded amount (RSS read from /proc/<pid>/status, so the server is a process of
its own), and cannot delay another client: a second client's `GET /health` on a fresh
connection is answered within 100 ms of its own baseline, measured throughout.

The probe's baseline is taken on the same machine just before the hostile client
starts, so a loaded machine (two CPU burners, several agents) widens both alike:
worst-during < 100 ms + worst-baseline.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import BuildPlugin
from tests.serving import KIT, free_port
from tests.wire import Answer, parse

# What one hostile connection may add to the server's peak RSS. The stated bound is about
# max_body_bytes + 2 MiB; the headroom is for the allocator and a busy machine (b77e906
# grew 170 MB to 800 MB here).
RSS_BOUND = 64 << 20
PROBE_SLACK_S = 0.100
BIG = 1 << 20  # a 1 MB answer, from the blob plugin
MEDIUM = 64 << 10  # a 64 KiB answer, static
# A plugin whose every answer is BIG bytes (a config may not hold a 1 MB static body).
BLOB_C = r"""
#include <backworks/sdk.h>

static char blob[1 << 20];

static int32_t blob_init(const bw_host *host, const char *config, size_t len, void **state,
                         bw_response *error) {
    (void)host; (void)config; (void)len; (void)error;
    memset(blob, 'b', sizeof blob);
    *state = NULL;
    return BW_OK;
}

static void blob_shutdown(void *state) { (void)state; }

static int32_t blob_handle(void *state, const bw_request *req, bw_response *resp) {
    (void)state; (void)req;
    return bw_respond_static(resp, 200, "application/octet-stream", blob, sizeof blob);
}

BW_DEFINE_PLUGIN(.name = "blob", .version = "0.1.0", .description = "1 MiB answers",
                 .init = blob_init, .handle = blob_handle, .shutdown = blob_shutdown)
"""


def request(line: str, *fields: str) -> bytes:
    return ("\r\n".join([line, "Host: t", *fields]) + "\r\n\r\n").encode()


def memory(pid: int) -> tuple[int, int]:
    """The process's RSS now and its peak RSS so far (VmHWM), in bytes."""
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            found[key] = int(value.split()[0]) * 1024
    return found["VmRSS"], found["VmHWM"]


def read_answers(sock: socket.socket, count: int, timeout: float = 30) -> list[Answer]:
    """The first `count` answers off `sock` (or fewer if it closes first)."""
    sock.settimeout(timeout)
    data = b""
    while True:
        answers, _ = parse(data)
        if len(answers) >= count:
            return answers[:count]
        part = sock.recv(1 << 20)
        if not part:
            return answers
        data += part


def read_to_eof(sock: socket.socket, timeout: float = 30) -> bytes:
    """Everything until the server closes (a reset raises: a clean close is EOF)."""
    sock.settimeout(timeout)
    data = b""
    while part := sock.recv(65536):
        data += part
    return data


def unread(sock: socket.socket) -> int:
    """Bytes waiting in `sock`'s receive buffer (FIONREAD)."""
    return int(struct.unpack("i", fcntl.ioctl(sock, termios.FIONREAD, b"\0\0\0\0"))[0])


def settled(sample: Callable[[], Any], timeout: float = 30, polls: int = 6) -> None:
    """Waits until `sample()` gives the same value `polls` times in a row (50 ms apart):
    the server has done what it will with the bytes it was sent."""
    deadline = time.monotonic() + timeout
    last, same = None, 0
    while time.monotonic() < deadline:
        now = sample()
        same = same + 1 if now == last else 0
        if same >= polls:
            return
        last = now
        time.sleep(0.05)
    pytest.fail(f"never settled: {sample}")


class Server:
    """A `backworks serve` process of `config` on a free port; its log kept in a file."""

    def __init__(self, folder: Path, config: dict[str, Any]) -> None:
        self.port = free_port()
        path = folder / "backworks.yaml"
        path.write_text(yaml.safe_dump(config))
        self.log = folder / "server.log"
        self._log = self.log.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "backworks", "serve", "--config", str(path),
             "--port", str(self.port)],
            cwd=folder,
            env={**os.environ, "BACKWORKS_CACHE_DIR": str(folder / "cache")},
            stdout=subprocess.DEVNULL,
            stderr=self._log,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 60
            while not self._answers():
                assert self.proc.poll() is None, self.log.read_text()[-3000:]
                assert time.monotonic() < deadline, "the server never answered"
                time.sleep(0.05)
        except BaseException:
            self.stop()
            raise

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
                s.sendall(request("GET /health HTTP/1.1", "Connection: close"))
                return read_to_eof(s, 5).startswith(b"HTTP/1.1 200 ")
        except OSError:
            return False

    def connect(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=30)

    def memory(self) -> tuple[int, int]:
        return memory(self.proc.pid)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


class Probe(threading.Thread):
    """Another client: `GET /health` on a fresh connection every 20 ms, each one timed."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.samples: list[float] = []
        self.failures: list[str] = []
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            started = time.monotonic()
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=10) as s:
                    s.sendall(request("GET /health HTTP/1.1", "Connection: close"))
                    answer = read_to_eof(s, 10)
                if not answer.startswith(b"HTTP/1.1 200 "):
                    self.failures.append(answer[:100].decode("latin-1"))
            except OSError as e:
                self.failures.append(repr(e))
            self.samples.append(time.monotonic() - started)
            self._done.wait(0.02)

    def wait_for(self, count: int, timeout: float = 30) -> None:
        """Until `count` more probes have been answered (timed out or not)."""
        target = len(self.samples) + count
        deadline = time.monotonic() + timeout
        while len(self.samples) < target:
            assert time.monotonic() < deadline, "the probe stopped"
            time.sleep(0.01)

    def stop(self) -> None:
        self._done.set()
        self.join(15)


class Watch:
    """The probe's baseline, then the hostile client; `check()` asserts the promises."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.probe = Probe(server.port)
        self.probe.start()
        self.probe.wait_for(15)
        self.baseline = max(self.probe.samples)
        self.mark = len(self.probe.samples)
        self.rss_before = server.memory()[0]

    def check(self) -> None:
        """Another client was answered within 100 ms of its baseline throughout, and
        the server's peak RSS grew by less than RSS_BOUND."""
        self.probe.wait_for(3)  # at least a few probes after the hostile part, too
        self.probe.stop()
        during = self.probe.samples[self.mark :]
        assert not self.probe.failures, self.probe.failures[:3]
        worst = max(during)
        assert worst < PROBE_SLACK_S + self.baseline, (
            f"another client waited {worst * 1000:.0f} ms "
            f"(baseline {self.baseline * 1000:.0f} ms, {len(during)} probes)"
        )
        _, peak = self.server.memory()
        growth = peak - self.rss_before
        assert growth < RSS_BOUND, f"RSS grew {growth >> 20} MiB"


@pytest.fixture(params=["lane", "aiohttp"])
def server(
    request: pytest.FixtureRequest, tmp_path: Path, build_plugin: BuildPlugin
) -> Iterator[Server]:
    """A server on each engine: static answers of 8 B and 64 KiB, a plugin's of 1 MiB."""
    build_plugin(KIT, "kit", tmp_path / "plugins", extra_flags=('-DKIT_NAME="kit"',))
    build_plugin(BLOB_C, "blob", tmp_path / "plugins")
    config = {
        "plugin_discovery": {"enabled": True, "directories": ["./plugins"]},
        "endpoints": {
            "/health": {"method": "GET", "response": {"status": 200, "body": '{"up": 1}'}},
            "/medium": {"method": "GET", "response": {"status": 200, "body": "m" * MEDIUM}},
            "/big": {"method": "GET", "runtime": {"type": "plugin", "handler": "blob"}},
            "/echo": {"method": "POST", "runtime": {"type": "plugin", "handler": "kit"}},
        },
        "server": {
            "engine": request.param,
            "header_timeout_ms": 1500,
            "body_timeout_ms": 1500,
        },
        "logging": {"level": "warning", "format": "json"},
    }
    started = Server(tmp_path, config)
    yield started
    started.stop()


def refused_as_it_arrives(server: Server, start: bytes, more: bytes) -> tuple[bytes, int]:
    """Sends `start`, then `more` over and over, until the server answers or 16 MiB
    went out; returns what the server wrote before its close, and the bytes sent."""
    with server.connect() as sock:
        sock.sendall(start)
        sent = len(start)
        try:
            while sent < 16 << 20 and not select.select([sock], [], [], 0)[0]:
                sock.sendall(more)
                sent += len(more)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server closed after its answer: read the answer
        return read_to_eof(sock), sent


def test_an_endless_header_field_is_431_at_once(server: Server) -> None:
    watch = Watch(server)
    data, sent = refused_as_it_arrives(
        server, b"GET /health HTTP/1.1\r\nHost: t\r\nX-Endless: ", b"a" * 65536
    )
    # 431, not the 408 of the 1.5 s header timeout; sent as fast as the socket takes
    # it, so the kernel's buffers, not the server, decide how much went out before.
    assert data.startswith(b"HTTP/1.1 431 "), data[:80]
    assert sent < 16 << 20, "answered before the client gave up"
    watch.check()


def test_an_endless_head_of_small_fields_is_431_at_once(server: Server) -> None:
    watch = Watch(server)
    fields = b"".join(b"X-F%d: v\r\n" % i for i in range(6000))  # 64 KiB and more
    data, sent = refused_as_it_arrives(server, b"GET /health HTTP/1.1\r\nHost: t\r\n", fields)
    assert data.startswith(b"HTTP/1.1 431 "), data[:80]
    assert sent < 16 << 20, "answered before the client gave up"
    watch.check()


@pytest.mark.parametrize(
    ("start", "trickle"),
    [
        (b"GET /health HTTP/1.1\r\nHost: t\r\n", b"X-Slow: " + b"a" * 400),
        (b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 100000\r\n\r\n", b"b" * 400),
    ],
    ids=["head", "body"],
)
def test_a_trickled_head_or_body_is_408_at_its_timeout(
    server: Server, start: bytes, trickle: bytes
) -> None:
    watch = Watch(server)
    with server.connect() as sock:
        sock.sendall(start)
        started = time.monotonic()
        try:
            for byte in trickle:  # 20 bytes a second: a few within every read timeout
                if select.select([sock], [], [], 0.05)[0]:
                    break
                sock.sendall(bytes([byte]))
        except (BrokenPipeError, ConnectionResetError):
            pass
        data = read_to_eof(sock)
    elapsed = time.monotonic() - started
    assert data.startswith(b"HTTP/1.1 408 "), data[:80]
    assert elapsed < 10, f"answered after {elapsed:.1f} s; the timeout is 1.5 s"
    watch.check()


def flood(server: Server, path: str, count: int) -> tuple[socket.socket, threading.Thread]:
    """`count` pipelined GETs of `path` on one connection whose answers nobody reads;
    sent from a thread (the server may stop reading them, and should)."""
    sock = server.connect()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
    pipeline = request(f"GET {path} HTTP/1.1") * count

    def send() -> None:
        with contextlib.suppress(OSError):  # closed by the test once it has seen enough
            sock.sendall(pipeline)

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    return sock, sender


@pytest.mark.parametrize(
    ("path", "count", "size"),
    [("/big", 40_000 // 30, BIG), ("/medium", 3000, MEDIUM)],
    ids=["40 KB of GETs of 1 MB answers", "3000 GETs of 64 KiB answers"],
)
def test_a_pipeline_nobody_reads_is_not_buffered(
    server: Server, path: str, count: int, size: int
) -> None:
    watch = Watch(server)
    sock, sender = flood(server, path, count)
    with sock:
        # The server writes until the connection's buffers are full, then stops: wait
        # until neither the client's unread bytes nor the server's RSS move any more.
        settled(lambda: (unread(sock), server.memory()[0] >> 20))
        watch.check()
        answers = read_answers(sock, 3)
    sender.join(10)
    assert [(a.status, len(a.body)) for a in answers] == [(200, size)] * 3


def test_a_half_closed_client_gets_its_answers_then_eof(server: Server) -> None:
    watch = Watch(server)
    with server.connect() as sock:
        sock.sendall(request("GET /health HTTP/1.1") * 2 + request("GET /medium HTTP/1.1"))
        sock.shutdown(socket.SHUT_WR)
        answers, rest = parse(read_to_eof(sock))
    assert [a.status for a in answers] == [200, 200, 200]
    assert len(answers[2].body) == MEDIUM
    assert rest == b""
    watch.check()


def test_a_client_half_closed_mid_head_is_closed_at_once(server: Server) -> None:
    watch = Watch(server)
    with server.connect() as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: t\r\nX-Half: ")
        sock.shutdown(socket.SHUT_WR)
        started = time.monotonic()
        data = read_to_eof(sock)
    assert time.monotonic() - started < 1.0, "closed at the EOF, not at the header timeout"
    answers, _ = parse(data)
    assert [a.status for a in answers] in ([], [400]), data[:80]
    watch.check()


def test_a_half_closed_client_that_never_reads_costs_no_memory(server: Server) -> None:
    watch = Watch(server)
    sock, sender = flood(server, "/big", 200)
    with sock:
        sender.join(10)
        sock.shutdown(socket.SHUT_WR)
        settled(lambda: (unread(sock), server.memory()[0] >> 20))
        watch.check()
        answers = read_answers(sock, 2)
    assert [(a.status, len(a.body)) for a in answers] == [(200, BIG)] * 2
