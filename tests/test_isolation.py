"""Process isolation end to end: real C plugins in real worker processes, driven
through a real PluginRunner. A segfault, a hang or a memory blowup costs one call."""

from __future__ import annotations

import asyncio
import collections
import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import pytest
from structlog.testing import capture_logs

from backworks.abi import Request, Response
from backworks.config import ProcessLimits
from backworks.errors import (
    CircuitOpenError,
    PluginCallError,
    PluginCrashedError,
    PluginInitError,
    PluginLoadError,
    PluginOutcomeUnknownError,
    PluginTimeoutError,
    PluginUnavailableError,
)
from backworks.isolation import framing as fr
from backworks.isolation.backend import ProcessBackend
from backworks.isolation.child import Channel, Outbox, Worker
from backworks.isolation.framing import WorkerInit
from backworks.isolation.probe import probe
from backworks.isolation.process import WorkerProcess
from backworks.plugins.loading import PluginSpec
from backworks.runtime.breaker import CircuitBreaker
from backworks.runtime.runner import PluginRunner
from tests.cbuild import REPO
from tests.conftest import BuildPlugin

PLUGINS = Path(__file__).parent / "plugins"
CRASHKIT = (PLUGINS / "crashkit.c").read_text()
TESTKIT = (PLUGINS / "testkit.c").read_text()


class Lib(Protocol):
    """The `lib` fixture: compiles tests/plugins/<kit>.c as plugin `name`."""

    def __call__(
        self,
        kit: str = "crashkit",
        *,
        name: str = "crashy",
        thread_safe: bool = False,
        nonblocking: bool = False,
    ) -> Path: ...


class Make(Protocol):
    """The `make` fixture: a started ProcessBackend behind a PluginRunner."""

    async def __call__(
        self,
        kit: str = "crashkit",
        *,
        name: str = "crashy",
        config: dict[str, Any] | None = None,
        thread_safe: bool = False,
        nonblocking: bool = False,
        workers: int = 1,
        per_worker: int = 1,
        memory_limit_mb: int | None = None,
        cpu_limit_ms: int | None = None,
        max_concurrency: int | None = None,
        timeout_ms: int = 3000,
        failure_threshold: int = 100,
        max_calls_per_worker: int | None = None,
        retry_on_crash: bool = False,
    ) -> PluginRunner: ...


def get(path: str, **fields: Any) -> Request:
    return Request("GET", path, **fields)


def post(path: str, **fields: Any) -> Request:
    """A request that is not idempotent: lost with a worker, it is not sent again."""
    return Request("POST", path, **fields)


def pid_of(body: bytes) -> int:
    return int(json.loads(body)["pid"])


def backend_of(runner: PluginRunner) -> ProcessBackend:
    assert isinstance(runner.backend, ProcessBackend)
    return runner.backend


def worker_pids(runner: PluginRunner) -> list[int]:
    return [w["pid"] for w in runner.backend.snapshot()["workers"] if w["pid"]]


async def until(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def reaped(pid: int) -> bool:
    """True once `pid` is no child of ours: neither running nor a zombie."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True
    return False


def started_calls(runner: PluginRunner) -> frozenset[int]:
    """The calls the first worker's threads are running, from its running table."""
    proc = backend_of(runner)._workers.slots[0].proc
    return proc.started_calls() if proc is not None else frozenset()


def stopped(pid: int) -> bool:
    """The process is stopped (SIGSTOP): it runs nothing, reads nothing."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T"


def settled(runner: PluginRunner) -> bool:
    """No recycle under way: no successor starting, no replaced worker left."""
    snap = runner.backend.snapshot()
    return not snap["retiring_workers"] and not any(w["recycling"] for w in snap["workers"])


@pytest.fixture(autouse=True)
def no_child_left() -> Iterator[None]:
    """After every test: no child process of ours, neither running nor a zombie."""
    yield
    try:
        leftover = os.waitpid(-1, os.WNOHANG)
    except ChildProcessError:
        return
    pytest.fail(f"a child process was left behind: {leftover}")


@pytest.fixture
def lib(build_plugin: BuildPlugin, tmp_path: Path) -> Lib:
    """`lib("crashkit" | "testkit", name=..., thread_safe=False)` compiles a test plugin.

    `nonblocking`: BW_FLAG_THREAD_SAFE | BW_FLAG_NONBLOCKING, so a worker runs the calls
    one read brings back to back on its reading thread, and answers them in one write.
    """

    def build(
        kit: str = "crashkit",
        *,
        name: str = "crashy",
        thread_safe: bool = False,
        nonblocking: bool = False,
    ) -> Path:
        flags: tuple[str, ...] = ()
        if nonblocking:
            flags = ("-DKIT_FLAGS=(BW_FLAG_THREAD_SAFE|BW_FLAG_NONBLOCKING)",)
        elif thread_safe:
            flags = ("-DKIT_FLAGS=BW_FLAG_THREAD_SAFE",)
        source = CRASHKIT if kit == "crashkit" else TESTKIT
        path = build_plugin(
            source, name=name, folder=tmp_path / "lib", extra_flags=(f'-DKIT_NAME="{name}"', *flags)
        )
        path.chmod(0o755)
        path.parent.chmod(0o755)
        return path

    return build


@pytest.fixture
async def make(lib: Lib) -> AsyncIterator[Make]:
    """Builds, probes and starts a ProcessBackend behind a PluginRunner; closes it after."""
    runners: list[PluginRunner] = []

    async def start(
        kit: str = "crashkit",
        *,
        name: str = "crashy",
        config: dict[str, Any] | None = None,
        thread_safe: bool = False,
        nonblocking: bool = False,
        workers: int = 1,
        per_worker: int = 1,
        memory_limit_mb: int | None = None,
        cpu_limit_ms: int | None = None,
        max_concurrency: int | None = None,
        timeout_ms: int = 3000,
        failure_threshold: int = 100,
        max_calls_per_worker: int | None = None,
        retry_on_crash: bool = False,
    ) -> PluginRunner:
        spec = PluginSpec(
            name=name,
            path=lib(kit, name=name, thread_safe=thread_safe, nonblocking=nonblocking),
            config_json=json.dumps(config or {}).encode(),
        )
        info = await probe(spec)
        backend = ProcessBackend(
            info,
            spec,
            ProcessLimits(
                workers, memory_limit_mb, cpu_limit_ms, max_calls_per_worker, retry_on_crash
            ),
            concurrency_per_worker=per_worker,
        )
        await backend.start()
        runner = PluginRunner(
            backend,
            max_concurrency=max_concurrency or workers * per_worker,
            timeout_ms=timeout_ms,
            queue_timeout_ms=3000,
            breaker=CircuitBreaker(failure_threshold, recovery_timeout_ms=60_000),
        )
        runners.append(runner)
        return runner

    yield start
    for runner in runners:
        pids = worker_pids(runner)
        await runner.close(drain_timeout=0.5)
        assert all(reaped(pid) for pid in pids), "a worker outlived its runner"


# ---------------------------------------------------------------------------
# The same calls as in-process


async def test_probe_reads_the_descriptor_in_a_worker(lib: Lib) -> None:
    path = lib("testkit", name="kit")
    info = await probe(PluginSpec(name="kit", path=path))
    assert (info.name, info.version, info.path) == ("kit", "0.1.0", str(path))
    assert info.has_health
    assert info.has_on_request
    assert info.has_on_response
    assert not info.thread_safe
    with pytest.raises(PluginLoadError, match="declares plugin 'kit', but the config expects"):
        await probe(PluginSpec(name="other", path=path))
    with pytest.raises(PluginLoadError, match="no such file"):
        await probe(PluginSpec(name="kit", path=path.with_name("missing.so")))


async def test_handle_hooks_and_health_run_in_the_worker(make: Make) -> None:
    runner = await make("testkit", name="kit")
    req = Request(
        "POST",
        "/kit/echo",
        query="q=1",
        endpoint="/kit/{rest}",
        params=(("rest", "echo"),),
        headers=(("x-a", "b"),),
        body=b"\x00\x01\x02",
        request_id="r1",
        timeout_ms=3000,
    )
    echoed = json.loads((await runner.handle(req)).body)
    assert echoed["path"] == "/kit/echo"
    assert echoed["query"] == "q=1"
    assert echoed["params"] == [["rest", "echo"]]
    assert ["x-a", "b"] in echoed["headers"]
    assert echoed["body_len"] == 3
    assert echoed["request_id"] == "r1"

    made = await runner.handle(get("/kit/headers"))
    assert (made.status, made.body, made.content_type) == (
        201,
        b"made",
        "text/plain; charset=utf-8",
    )
    assert made.headers == (("x-kit", "kit"),)
    binary = await runner.handle(Request("POST", "/kit/binary", body=bytes(range(256)) * 100))
    assert binary.body == bytes(range(256)) * 100

    assert await runner.on_request(get("/x")) is None
    denied = await runner.on_request(get("/x", headers=(("x-deny", "1"),)))
    assert denied is not None
    assert denied.status == 401
    with pytest.raises(PluginCallError, match="hook failure from kit"):
        await runner.on_request(get("/x", headers=(("x-hook-fail", "1"),)))
    hooked = await runner.on_response(get("/x"), made)
    assert hooked is not None
    assert ("x-hooked-by-kit", "yes") in hooked.headers
    assert hooked.body == b"made"

    with pytest.raises(PluginCallError, match="deliberate failure from kit"):
        await runner.handle(get("/kit/fail"))
    report = await runner.health(timeout=2.0)
    assert report is not None
    assert json.loads(report.body) == {"ok": True, "plugin": "kit"}
    assert runner.stats.ok >= 6
    assert runner.stats.crashed == 0


async def test_logs_from_the_worker_reach_structlog_with_its_pid(make: Make) -> None:
    with capture_logs() as logs:
        runner = await make()
        pid = pid_of((await runner.handle(get("/pid"))).body)
        await runner.handle(get("/log"))
    lines = [e for e in logs if e["event"] == "plugin_log"]
    assert lines == [
        {
            "event": "plugin_log",
            "log_level": "info",
            "plugin": "crashy",
            "worker_pid": pid,
            "message": f"hello from {pid}",
        }
    ]


async def test_several_workers_share_the_calls_and_all_answer_health(make: Make) -> None:
    runner = await make(workers=2)
    busy = asyncio.ensure_future(runner.handle(get("/wait", query="ms=30000")))
    await until(lambda: runner.stats.in_flight == 1)
    # One worker is inside the long call: the other answers meanwhile.
    assert (await runner.handle(get("/pid"))).status == 200
    assert not busy.done(), "two workers run two calls at once"
    busy.cancel()  # the runner cancels it in the plugin, which returns at once
    with pytest.raises(asyncio.CancelledError):
        await busy
    await until(lambda: runner.stats.in_flight == 0, timeout=30)
    pids = {pid_of((await runner.handle(get("/pid"))).body) for _ in range(4)}
    assert pids == set(worker_pids(runner))
    report = await runner.health(timeout=2.0)
    assert report is not None
    assert pid_of(report.body) in worker_pids(runner)


async def test_a_thread_safe_plugin_runs_calls_concurrently_in_one_worker(make: Make) -> None:
    runner = await make("testkit", name="kit", thread_safe=True, per_worker=4)
    await asyncio.gather(*(runner.handle(get("/overlap", query="ms=1000")) for _ in range(4)))
    assert json.loads((await runner.handle(get("/max-overlap"))).body) == {"max_overlap": 4}


async def test_several_calls_per_worker_need_a_thread_safe_plugin(lib: Lib) -> None:
    spec = PluginSpec(name="crashy", path=lib())
    info = await probe(spec)
    with pytest.raises(ValueError, match="must be 1 for a plugin without BW_FLAG_THREAD_SAFE"):
        ProcessBackend(info, spec, concurrency_per_worker=2)


# ---------------------------------------------------------------------------
# Crashes


@pytest.mark.parametrize(
    ("path", "died"),
    [
        ("/segv", "died with SIGSEGV"),
        ("/abort", "died with SIGABRT"),
        ("/exit", "exited with status 7"),
    ],
)
async def test_a_crash_fails_the_call_it_ran_and_the_worker_is_respawned(
    make: Make, path: str, died: str
) -> None:
    """A POST may have done its work before the crash: it is answered, not sent again."""
    runner = await make()
    first = pid_of((await runner.handle(get("/pid"))).body)
    with pytest.raises(PluginCrashedError, match=f"worker {first} {died}"):
        await runner.handle(post(path, query="code=7"))
    assert runner.stats.crashed == 1
    assert runner.breaker.consecutive_failures == 1
    second = pid_of((await runner.handle(get("/pid"))).body)  # waits for the respawn
    assert second != first
    assert reaped(first)
    [worker] = runner.backend.snapshot()["workers"]
    assert worker["restarts"] == 1
    assert worker["crashes"] == 1
    assert worker["state"] == "ready"
    assert died in worker["last_exit"]


async def test_calls_queued_behind_a_crash_go_to_the_next_worker(make: Make) -> None:
    runner = await make(max_concurrency=4)  # one worker, one call at a time: 3 wait here
    crash = asyncio.ensure_future(runner.handle(post("/segv")))
    queued = [asyncio.ensure_future(runner.handle(get("/pid"))) for _ in range(3)]
    with pytest.raises(PluginCrashedError):
        await crash
    pids = {pid_of(r.body) for r in await asyncio.gather(*queued)}
    assert len(pids) == 1
    assert runner.stats.crashed == 1


async def test_respawns_back_off_and_a_crash_loop_opens_the_breaker(make: Make) -> None:
    runner = await make(failure_threshold=3)
    with capture_logs() as logs:
        for _ in range(2):
            with pytest.raises(PluginCrashedError):
                await runner.handle(post("/segv"))
        await runner.handle(get("/pid"))  # an answer resets the backoff
        with pytest.raises(PluginCrashedError):
            await runner.handle(post("/segv"))
        for _ in range(2):
            with pytest.raises(PluginCrashedError):
                await runner.handle(post("/segv"))
    delays = [e["restart_in_ms"] for e in logs if e["event"] == "plugin_worker_crashed"]
    assert delays == [100, 200, 100, 200, 400]
    with pytest.raises(CircuitOpenError, match="3 consecutive failures"):
        await runner.handle(get("/pid"))
    assert runner.snapshot()["circuit"] == "open"


async def test_a_get_that_crashes_twice_is_answered_as_a_poison_request(make: Make) -> None:
    """Sent once more after the first death, it is the culprit after the second."""
    runner = await make(failure_threshold=2)
    with (
        capture_logs() as logs,
        pytest.raises(PluginCrashedError, match="crashed a worker 2 times"),
    ):
        await runner.handle(get("/segv", request_id="req-poison"))
    poison = [e for e in logs if e["event"] == "plugin_poison_request"]
    assert [(e["request_id"], e["worker_deaths"]) for e in poison] == [("req-poison", 2)]
    assert [e["event"] for e in logs].count("plugin_worker_crashed") == 2, "no third try"
    # Two deaths for one request: one failed answer, one failure on the breaker.
    assert (runner.stats.crashed, runner.breaker.consecutive_failures) == (1, 1)
    assert runner.snapshot()["circuit"] == "closed"
    assert (await runner.handle(get("/pid"))).status == 200


async def test_retry_on_crash_sends_any_method_again(make: Make) -> None:
    runner = await make(retry_on_crash=True)
    with pytest.raises(PluginCrashedError, match="crashed a worker 2 times"):
        await runner.handle(post("/segv"))
    assert runner.backend.snapshot()["workers"][0]["crashes"] == 2


async def test_a_call_its_worker_never_began_is_sent_again_whatever_its_method(
    make: Make,
) -> None:
    runner = await make()
    [pid] = worker_pids(runner)
    os.kill(pid, signal.SIGSTOP)  # our unreaped child: the PID is still its own
    await until(lambda: stopped(pid))
    call = asyncio.ensure_future(runner.handle(post("/pid")))
    await until(lambda: runner.stats.in_flight == 1)  # sent; the worker cannot read it
    os.kill(pid, signal.SIGKILL)
    answer = await call
    assert pid_of(answer.body) not in (pid, 0), "answered by the respawned worker"
    assert runner.stats.failed == 0


async def test_one_worker_death_counts_once_on_the_breaker(make: Make) -> None:
    runner = await make(thread_safe=True, per_worker=4, failure_threshold=2)
    calls = [
        asyncio.ensure_future(runner.handle(post("/wait", query="ms=60000"))) for _ in range(4)
    ]
    await until(lambda: len(started_calls(runner)) == 4)
    [pid] = worker_pids(runner)
    os.kill(pid, signal.SIGKILL)  # the OOM killer, say: four calls lost, one death
    for call in calls:
        with pytest.raises(PluginCrashedError, match="died with SIGKILL"):
            await call
    assert runner.stats.crashed == 4
    assert runner.breaker.consecutive_failures == 1
    assert runner.snapshot()["circuit"] == "closed"


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_a_worker_stopped_for_a_deaf_call_spares_its_neighbours(
    make: Make, method: str
) -> None:
    """The deaf call was counted as a timeout; its neighbours are not its culprits."""
    runner = await make(thread_safe=True, per_worker=2, failure_threshold=1, timeout_ms=60_000)
    deaf = asyncio.ensure_future(runner.handle(get("/hang")))
    neighbour = asyncio.ensure_future(runner.handle(Request(method, "/wait", query="ms=1000")))
    await until(lambda: len(started_calls(runner)) == 2)
    deaf.cancel()  # the host gives up on it; it ignores the cancel word: its worker is stopped
    with pytest.raises(asyncio.CancelledError):
        await deaf
    if method == "GET":
        assert (await neighbour).status == 200, "sent again to the replacement"
    else:  # it may have done its work already: answered, but not against the breaker
        with pytest.raises(PluginCrashedError, match="stopped because a call ignored"):
            await neighbour
    assert runner.breaker.consecutive_failures == 0
    assert runner.snapshot()["circuit"] == "closed"
    [worker] = runner.backend.snapshot()["workers"]
    assert (worker["restarts"], worker["crashes"]) == (1, 0)


async def test_suspects_run_alone_so_only_the_culprit_is_lost_twice(make: Make) -> None:
    """Four GETs running at a death are sent again one at a time; one is the culprit."""
    runner = await make(thread_safe=True, per_worker=4, failure_threshold=2)
    with capture_logs() as logs:
        neighbours = [
            asyncio.ensure_future(runner.handle(get("/wait", query="ms=300"))) for _ in range(3)
        ]
        await until(lambda: len(started_calls(runner)) == 3)
        with pytest.raises(PluginCrashedError, match="crashed a worker 2 times"):
            await runner.handle(get("/segv"))
        answers = await asyncio.gather(*neighbours)
    assert [a.status for a in answers] == [200, 200, 200]
    retried = [e for e in logs if e["event"] == "plugin_calls_retried"]
    assert (retried[0]["calls"], retried[0]["suspects"]) == (4, 4)
    assert runner.stats.failed == 1
    assert runner.backend.snapshot()["workers"][0]["crashes"] == 2


def first_worker(runner: PluginRunner) -> WorkerProcess:
    proc = backend_of(runner)._workers.slots[0].proc
    assert proc is not None
    return proc


async def one_batch(runner: PluginRunner, *requests: Request) -> list[asyncio.Task[Response]]:
    """Starts `requests` so that their worker reads them all in one read.

    The worker is stopped while the host writes them (one write, at the end of this loop
    turn), and goes on once they all wait in its channel.
    """
    proc = first_worker(runner)
    os.kill(proc.pid, signal.SIGSTOP)  # our unreaped child: the PID is still its own
    await until(lambda: stopped(proc.pid))
    calls = [asyncio.ensure_future(runner.handle(r)) for r in requests]
    await until(lambda: runner.stats.in_flight == len(requests))
    await until(lambda: not proc._outbox and not proc._pending)  # written to the channel
    os.kill(proc.pid, signal.SIGCONT)
    return calls


async def test_a_call_answered_but_not_yet_sent_when_its_worker_dies_ran(make: Make) -> None:
    """Answers leave in batches: a POST that ran before the crasher is not run again."""
    runner = await make(nonblocking=True, per_worker=2)
    [pid] = worker_pids(runner)
    ran, crasher = await one_batch(runner, post("/pid"), post("/segv"))
    with pytest.raises(PluginCrashedError, match="died with SIGSEGV"):
        await crasher  # alone running at the death: the culprit
    with pytest.raises(PluginOutcomeUnknownError, match="its answer was lost with the worker"):
        await ran  # it ran (its answer was made); not sent again, not a suspect
    assert runner.breaker.consecutive_failures == 1, "one death counts once"
    assert pid_of((await runner.handle(post("/pid"))).body) not in (pid, 0)


async def test_an_idempotent_call_whose_answer_was_lost_is_sent_again(make: Make) -> None:
    runner = await make(nonblocking=True, per_worker=2)
    [pid] = worker_pids(runner)
    ran, crasher = await one_batch(runner, get("/pid"), post("/segv"))
    with pytest.raises(PluginCrashedError, match="died with SIGSEGV"):
        await crasher
    assert pid_of((await ran).body) not in (pid, 0), "answered by the respawned worker"


async def test_a_worker_killed_mid_batch_tells_each_call_what_became_of_it(make: Make) -> None:
    """Answered but unsent, running, not started: three states, three outcomes."""
    runner = await make(nonblocking=True, per_worker=3, timeout_ms=30_000)
    [pid] = worker_pids(runner)
    proc = first_worker(runner)
    answered, running, waiting = await one_batch(
        runner, post("/pid"), post("/wait", query="ms=60000"), post("/pid")
    )
    await until(lambda: len(proc.running_calls()) == 1 and len(proc.unsent_answers()) == 1)
    assert proc.started_calls() == proc.running_calls() | proc.unsent_answers()
    os.kill(pid, signal.SIGKILL)  # the OOM killer, say, in the middle of the batch
    with pytest.raises(PluginOutcomeUnknownError, match="its answer was lost with the worker"):
        await answered
    with pytest.raises(PluginCrashedError, match="died with SIGKILL"):
        await running
    assert pid_of((await waiting).body) not in (pid, 0), "never started: sent again"


def test_the_outbox_writes_a_batch_once_and_clears_its_entries_only_then() -> None:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        table = bytearray(fr.TABLE_ENTRY.size * 3)  # one call thread, two unsent entries
        outbox = Outbox(Channel(theirs), table, range(4, 12, 4))

        def ids() -> list[int]:
            return [i for (i,) in fr.TABLE_ENTRY.iter_unpack(table)]

        for call_id in (7, 8):
            fr.TABLE_ENTRY.pack_into(table, 0, call_id)  # the thread runs it
            outbox.add(fr.frame(fr.NONE, call_id), call_id, 0, write=False)
            assert ids()[0] == 0, "the thread is free for the next call"
        assert sorted(ids()[1:]) == [7, 8], "answered, not sent: still in the table"
        ours.setblocking(False)
        with pytest.raises(BlockingIOError):
            ours.recv(100)  # nothing written yet
        fr.TABLE_ENTRY.pack_into(table, 0, 9)
        outbox.add(fr.frame(fr.NONE, 9), 9, 0, write=False)  # no free entry: 7 and 8 go first
        assert [c for _, c, _ in fr.FrameReader().feed(ours.recv(100))] == [7, 8]
        assert sorted(ids()) == [0, 0, 9]
        outbox.flush()
        assert [c for _, c, _ in fr.FrameReader().feed(ours.recv(100))] == [9]
        assert ids() == [0, 0, 0]


async def test_init_failing_in_the_worker_raises_the_plugins_message(make: Make) -> None:
    with pytest.raises(PluginInitError, match="crashkit init refuses: told to fail"):
        await make(config={"init": "fail"})


async def test_workers_dying_before_ready_fail_the_start(make: Make) -> None:
    started = time.monotonic()
    with pytest.raises(PluginInitError, match=r"died 3 times in a row .*SIGSEGV"):
        await make(config={"init": "segv"})
    # 0.1 + 0.2 s of backoff and three starts: far less than a start budget (10 s).
    assert time.monotonic() - started < 8, "retried with a short backoff, then gave up"


async def test_an_init_that_hangs_fails_the_start_after_its_start_timeout(
    lib: Lib,
) -> None:
    spec = PluginSpec(name="crashy", path=lib(), config_json=b'{"init": "hang"}')
    backend = ProcessBackend(await probe(spec), spec, start_timeout_ms=1000)
    started = time.monotonic()
    with pytest.raises(PluginInitError, match="did not start within start_timeout_ms of 1000 ms"):
        await backend.start()
    assert time.monotonic() - started < 8, "the init (60 s) was not waited for"
    assert [w["state"] for w in backend.snapshot()["workers"]] == ["failed"]


async def test_a_plugin_that_cannot_restart_is_failed_and_calls_fail_fast(
    make: Make, tmp_path: Path
) -> None:
    trap = tmp_path / "crash-at-init"
    runner = await make(config={"segv_init_if": str(trap)})
    trap.touch()  # from now on every new worker dies in init
    with pytest.raises(PluginCrashedError):
        await runner.handle(post("/segv"))
    backend = backend_of(runner)
    await until(lambda: backend.snapshot()["worker_failure"] is not None, timeout=30)
    assert "died 3 times in a row" in backend.snapshot()["worker_failure"]
    started = time.monotonic()
    with pytest.raises(PluginUnavailableError, match="plugin failed: its worker died 3 times"):
        await runner.handle(get("/pid"))
    # Fast: no spawn attempt, no backoff wait (those take a second or more here).
    assert time.monotonic() - started < 1.0
    [worker] = backend.snapshot()["workers"]
    assert worker["state"] == "failed"
    assert worker["pid"] is None


# ---------------------------------------------------------------------------
# Hard timeouts and limits


async def test_a_call_ignoring_cancellation_is_killed_with_its_worker(make: Make) -> None:
    runner = await make(timeout_ms=1000, max_concurrency=2)
    first = pid_of((await runner.handle(get("/pid"))).body)
    with pytest.raises(PluginTimeoutError):
        await runner.handle(get("/hang"))
    # The worker is still busy with /hang (for 60 s): cancel grace, then SIGTERM, and
    # a replacement is spawned.
    await until(lambda: runner.backend.snapshot()["workers"][0]["restarts"] == 1, timeout=30)
    await until(lambda: runner.backend.snapshot()["workers"][0]["state"] == "ready", timeout=30)
    second = pid_of((await runner.handle(get("/pid"))).body)
    assert second != first
    assert reaped(first)
    assert runner.stats.in_flight == 0, "the abandoned call's slot was freed"
    [worker] = runner.backend.snapshot()["workers"]
    assert worker["restarts"] == 1
    assert worker["crashes"] == 0
    assert "died with SIGTERM" in worker["last_exit"]


async def test_a_call_that_honours_cancellation_keeps_its_worker(make: Make) -> None:
    runner = await make(timeout_ms=200)
    first = pid_of((await runner.handle(get("/pid"))).body)
    with pytest.raises(PluginTimeoutError):
        await runner.handle(get("/wait", query="ms=60000"))
    await until(lambda: runner.stats.in_flight == 0, timeout=30)
    assert pid_of((await runner.handle(get("/pid"))).body) == first
    assert runner.backend.snapshot()["workers"][0]["restarts"] == 0


# Starts its arguments as a child and exits with its status. The kernel's peak RSS of a
# process counts its parent's at fork, and exec keeps it: a host started by a big test
# process would look big. One more fork from a small process starts it afresh.
_FRESH_PEAK = "import subprocess, sys; sys.exit(subprocess.call(sys.argv[1:]))"


def small_host_call(lib: Lib, memory_limit_mb: int, path: str) -> dict[str, Any]:
    """One POST to `path` through a ProcessBackend in a fresh small host process."""
    call = (str(memory_limit_mb), path)
    host = (sys.executable, "-m", "tests.isolation_host", str(lib()), "crashy", "1", *call)
    out = subprocess.run(
        [sys.executable, "-c", _FRESH_PEAK, *host],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return json.loads(out.stdout.splitlines()[-1])  # type: ignore[no-any-return]


@pytest.mark.parametrize(("then", "died"), [("segv", "SIGSEGV"), ("abort", "SIGABRT")])
def test_exceeding_memory_limit_is_a_crash_with_a_clear_reason(
    lib: Lib, then: str, died: str
) -> None:
    """The worker's own peak (the kernel's, above what it inherited) names the cause."""
    answer = small_host_call(lib, 64, f"/hog?then={then}")
    assert re.search(f"{died} .*ran out of its memory_limit_mb of 64", answer["error"]), answer


async def test_a_crash_is_not_blamed_on_memory_the_host_used(make: Make) -> None:
    """A worker inherits the host's peak RSS in the kernel's accounting: not its own."""
    peak = b"\x01" * (256 << 20)  # the host's resident memory peaks above the limit
    del peak
    runner = await make(memory_limit_mb=64)
    with pytest.raises(PluginCrashedError, match="died with SIGSEGV") as crashed:
        await runner.handle(post("/segv"))
    assert "memory" not in str(crashed.value)


async def test_a_plugin_that_handles_a_failed_allocation_keeps_its_worker(make: Make) -> None:
    runner = await make(memory_limit_mb=64)
    first = pid_of((await runner.handle(get("/pid"))).body)
    with pytest.raises(PluginCallError, match="out of memory"):
        await runner.handle(get("/hog", query="then=fail"))
    assert pid_of((await runner.handle(get("/pid"))).body) == first


async def test_cpu_limit_stops_a_spinning_call(make: Make) -> None:
    runner = await make(cpu_limit_ms=100, timeout_ms=60_000)
    first = pid_of((await runner.handle(get("/pid"))).body)
    # Stopped by its CPU time, not by the 60 s timeout: /spin never returns by itself.
    with pytest.raises(PluginTimeoutError, match=r"used \d+ ms of CPU time.*cpu_limit_ms of 100"):
        await runner.handle(get("/spin"))
    second = pid_of((await runner.handle(get("/pid"))).body)
    assert second != first, "a call ignoring cancellation takes its worker along"

    # Cancelled politely: the worker stays. Sleeping is not CPU time; short spins pass.
    with pytest.raises(PluginTimeoutError, match="cpu_limit_ms"):
        await runner.handle(get("/spin-polite"))
    assert (await runner.handle(get("/wait", query="ms=300"))).status == 200
    assert (await runner.handle(get("/spin", query="ms=20"))).status == 200
    assert pid_of((await runner.handle(get("/pid"))).body) == second


# ---------------------------------------------------------------------------
# Recycling and balance


async def test_workers_are_recycled_after_max_calls_with_a_handover(
    make: Make, tmp_path: Path
) -> None:
    marker = tmp_path / "marker"
    runner = await make(max_calls_per_worker=3, config={"marker": str(marker)})
    pids = []
    for rounds in range(1, 4):
        # POST: a call lost to a recycle would not be sent again, it would fail.
        pids += [pid_of((await runner.handle(post("/pid"))).body) for _ in range(3)]
        await until(lambda: settled(runner), timeout=30)
        assert runner.backend.snapshot()["workers"][0]["recycles"] == rounds
    pids.append(pid_of((await runner.handle(post("/pid"))).body))
    workers = list(dict.fromkeys(pids))
    assert len(workers) == 4
    assert pids == [p for p in workers[:3] for _ in range(3)] + [workers[3]]
    retired = workers[:3]
    assert all(reaped(pid) for pid in retired)
    shutdowns = marker.read_text().splitlines()
    assert shutdowns == [f"shutdown {pid}" for pid in retired], "each state shut down, in turn"
    assert runner.stats.failed == 0


async def test_no_call_fails_because_of_a_recycle_under_concurrent_traffic(make: Make) -> None:
    runner = await make(workers=2, max_calls_per_worker=10, max_concurrency=4)

    async def client() -> list[int]:
        return [(await runner.handle(post("/wait", query="ms=5"))).status for _ in range(50)]

    statuses = [
        s for answers in await asyncio.gather(*(client() for _ in range(4))) for s in answers
    ]
    assert statuses == [200] * 200
    await until(lambda: settled(runner), timeout=30)
    assert sum(w["recycles"] for w in runner.backend.snapshot()["workers"]) >= 2
    assert runner.stats.failed == 0


async def test_a_leaking_worker_is_recycled_before_it_reaches_its_memory_limit(
    make: Make,
) -> None:
    runner = await make(memory_limit_mb=64)
    pids = []
    for _ in range(40):  # 160 MB in all: far over the limit of any one worker
        pids.append(pid_of((await runner.handle(post("/leak", query="mb=4"))).body))
        await until(lambda: settled(runner), timeout=30)
    assert len(set(pids)) >= 3
    [worker] = runner.backend.snapshot()["workers"]
    assert worker["crashes"] == 0
    assert worker["recycles"] == len(set(pids)) - 1
    assert runner.stats.failed == 0


async def test_sequential_calls_are_spread_over_the_workers(make: Make) -> None:
    runner = await make(workers=3)
    pids = [pid_of((await runner.handle(get("/pid"))).body) for _ in range(9)]
    assert sorted(collections.Counter(pids).values()) == [3, 3, 3]
    assert set(pids) == set(worker_pids(runner))


def test_a_cancel_that_overtakes_its_call_still_cancels_it() -> None:
    """Cancels travel on their own channel, so one may arrive before its call."""
    ours, theirs = socket.socketpair()
    with ours, theirs:
        worker = Worker(Channel(ours), WorkerInit(path="unused", name="unused"))
        worker.cancel(5)
        assert worker.register(5).is_set
        worker.cancel(4)  # late: call 4 finished before its cancel arrived
        assert not worker.register(6).is_set
        worker.register(0xFFFFFFFF)
        worker.cancel(1)  # ids wrap around: 1 comes after 0xFFFFFFFF
        assert worker.register(1).is_set


# ---------------------------------------------------------------------------
# No leftovers


async def test_snapshot_shows_every_worker(make: Make) -> None:
    runner = await make(workers=2, memory_limit_mb=256, cpu_limit_ms=1000)
    snap = runner.snapshot()
    assert snap["isolation"] == "process"
    assert snap["memory_limit_mb"] == 256
    assert snap["cpu_limit_ms"] == 1000
    assert [set(w) >= {"pid", "state", "restarts", "last_exit"} for w in snap["workers"]] == [
        True,
        True,
    ]
    assert [w["state"] for w in snap["workers"]] == ["ready", "ready"]
    assert snap["worker_failure"] is None


async def test_close_shuts_every_state_down_and_reaps_the_workers(lib: Lib, tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    spec = PluginSpec(
        name="crashy", path=lib(), config_json=json.dumps({"marker": str(marker)}).encode()
    )
    backend = ProcessBackend(await probe(spec), spec, ProcessLimits(workers=2))
    await backend.start()
    runner = PluginRunner(
        backend, max_concurrency=2, timeout_ms=1000, queue_timeout_ms=100, breaker=CircuitBreaker()
    )
    pids = worker_pids(runner)
    assert await runner.close(drain_timeout=1.0)
    assert sorted(marker.read_text().split("\n")[:-1]) == sorted(f"shutdown {p}" for p in pids)
    assert all(reaped(pid) for pid in pids)
    assert [w["state"] for w in backend.snapshot()["workers"]] == ["stopped", "stopped"]


async def test_close_kills_a_worker_stuck_in_a_call(make: Make) -> None:
    runner = await make(timeout_ms=10_000)
    [pid] = worker_pids(runner)
    stuck = asyncio.ensure_future(runner.handle(get("/hang")))
    await until(lambda: runner.stats.in_flight == 1)
    started = time.monotonic()
    assert not await runner.close(drain_timeout=0.1)
    assert reaped(pid)
    assert time.monotonic() - started < 5, "not the 60 s of the hung call"
    with pytest.raises(PluginCrashedError, match="stopped because the plugin was closed"):
        await stuck


async def test_workers_die_with_a_host_killed_by_sigkill(lib: Lib) -> None:
    host = subprocess.Popen(
        [sys.executable, "-m", "tests.isolation_host", str(lib()), "crashy", "2"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert host.stdout is not None
        pids = json.loads(host.stdout.readline())["workers"]
        assert len(pids) == 2
        # Not our children: watch them through pidfds, immune to PID reuse.
        pidfds = [os.pidfd_open(pid) for pid in pids]
    finally:
        host.send_signal(signal.SIGKILL)
        host.wait()
        if host.stdout is not None:
            host.stdout.close()
    try:
        deadline = time.monotonic() + 5
        pending = list(pidfds)
        while pending and time.monotonic() < deadline:
            done, _, _ = select.select(pending, [], [], deadline - time.monotonic())
            pending = [fd for fd in pending if fd not in done]
        assert not pending, "a worker outlived its host"
    finally:
        for fd in pidfds:
            os.close(fd)
