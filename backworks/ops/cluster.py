"""A server's workers as one service: what each `--workers` process shares with its siblings.

The arbiter (server/workers.py) makes one private directory per server (mode 0700) and
hands it to every worker. In it each worker keeps:

- `{type}_{pid}.db`: its metrics in prometheus_client's multiprocess format, rewritten
  from its own counters every second and before each scrape it answers. /metrics on
  any worker reads every file (MultiProcessCollector), so one scrape reports the whole
  service, histograms summed. When a worker dies the arbiter drops its live gauges
  (`mark_process_dead`); its counters stay, so a service total never goes down.
- `peer-{pid}.sock`: an internal HTTP app on a Unix socket (ops/peers.py) through which
  a sibling asks for this worker's state and series, or asks it to reload a plugin or
  close a breaker: what the admin API and the dashboard do on one worker reaches all.
- `ready-{pid}`: written once the worker accepts requests; the arbiter's rolling
  restart waits for it before it stops an old worker.

Nothing here is on the request path: the files are written by a 1 s timer, and the
peers are asked only by the operator's routes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import aiohttp
import attrs
import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.core import Metric
from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

log = structlog.get_logger("backworks.cluster")

PEER_TIMEOUT_S = 5.0

# prometheus_client's own series of one process (ops/metrics.runtime_registry): kept per
# worker, never summed, and forgotten with the worker (`forget_worker`).
PER_WORKER_PREFIXES = ("process_", "python_")
PER_WORKER_COUNTERS = "counter_process"  # a file of its own, so it can go with its worker

# How a gauge of one worker combines with its siblings' (prometheus_client's modes; the
# `live` ones forget a dead worker). Counters and histograms are summed.
GAUGE_MODES: dict[str, str] = {
    "backworks_build_info": "livemax",
    "backworks_plugin_info": "livemax",  # loaded somewhere in the service
    "backworks_plugin_ready": "livemin",  # ready in every worker
    "backworks_plugin_in_flight": "livesum",
    "backworks_plugin_circuit_state": "livesum",  # workers whose breaker is in the state
}


@attrs.define
class PeerAnswer:
    """What one sibling answered (`body` None when it did not answer, see `error`)."""

    pid: int
    status: int = 0
    body: Any = None
    error: str | None = None


@attrs.define
class Cluster:
    """One worker's view of the server's private directory and of its siblings."""

    directory: Path
    pid: int = attrs.field(factory=os.getpid)
    _files: dict[str, MmapedDict] = attrs.field(factory=dict, init=False)
    _gauge_keys: dict[str, set[str]] = attrs.field(factory=dict, init=False)

    def socket_of(self, pid: int) -> Path:
        return self.directory / f"peer-{pid}.sock"

    def ready_file(self, pid: int) -> Path:
        return self.directory / f"ready-{pid}"

    def mark_ready(self) -> None:
        """Tells the arbiter that this worker accepts requests now."""
        self.ready_file(self.pid).touch()

    def peers(self) -> list[int]:
        """The pids of the live siblings that listen on their peer socket."""
        pids = []
        for sock in self.directory.glob("peer-*.sock"):
            pid = int(sock.stem.removeprefix("peer-"))
            if pid != self.pid and _alive(pid):
                pids.append(pid)
        return sorted(pids)

    async def ask_peers(
        self, method: str, path: str, params: dict[str, str] | None = None
    ) -> list[PeerAnswer]:
        """Asks every sibling at once; one that does not answer is reported, not fatal."""
        return list(
            await asyncio.gather(*(self._ask(pid, method, path, params) for pid in self.peers()))
        )

    async def _ask(
        self, pid: int, method: str, path: str, params: dict[str, str] | None
    ) -> PeerAnswer:
        timeout = aiohttp.ClientTimeout(total=PEER_TIMEOUT_S)
        connector = aiohttp.UnixConnector(path=str(self.socket_of(pid)))
        try:
            async with (
                aiohttp.ClientSession(connector=connector, timeout=timeout) as session,
                session.request(method, f"http://worker{path}", params=params) as resp,
            ):
                return PeerAnswer(pid, resp.status, await resp.json())
        except (aiohttp.ClientError, TimeoutError, ValueError) as e:
            # A sibling that exits during a rolling restart is expected to go quiet.
            log.info("peer_unanswered", peer=pid, path=path, error=repr(e))
            return PeerAnswer(pid, error=f"worker {pid} did not answer: {e!r}")

    # -- metrics -------------------------------------------------------------------

    def registry(self) -> CollectorRegistry:
        """A registry that reads every worker's metric files: the whole service."""
        registry = CollectorRegistry(auto_describe=False)
        MultiProcessCollector(registry, path=str(self.directory))
        return registry

    def write_metrics(self, families: Iterable[Metric]) -> None:
        """Writes this worker's current values into its multiprocess metric files.

        A gauge series this worker no longer reports (a plugin's old version, a plugin
        gone) is written as 0: the files keep every key they ever held.
        """
        written: dict[str, set[str]] = {}
        for family in families:
            per_worker = family.name.startswith(PER_WORKER_PREFIXES)
            if family.type == "counter" and per_worker:
                # Counters have no per-process mode: the pid goes into the labels.
                pid = str(self.pid)
                kind, samples = (
                    PER_WORKER_COUNTERS,
                    [
                        s._replace(labels={**s.labels, "pid": pid})
                        for s in family.samples
                        if s.name.endswith("_total")
                    ],
                )
            elif family.type == "counter":
                kind, samples = "counter", [s for s in family.samples if s.name.endswith("_total")]
            elif family.type == "gauge" and per_worker:
                kind, samples = "gauge_liveall", family.samples  # the reader adds `pid`
            elif family.type == "gauge":
                kind, samples = f"gauge_{GAUGE_MODES.get(family.name, 'livesum')}", family.samples
            elif family.type == "histogram":
                kind, samples = "histogram", _per_bucket(family)
            else:
                continue
            store = self._file(kind)
            keys = written.setdefault(kind, set())
            for sample in samples:
                names, values = list(sample.labels), list(sample.labels.values())
                key = mmap_key(family.name, sample.name, names, values, family.documentation)
                store.write_value(key, float(sample.value), 0.0)
                keys.add(key)
        for kind, keys in written.items():
            if kind.startswith("gauge_"):
                for stale in self._gauge_keys.get(kind, set()) - keys:
                    self._files[kind].write_value(stale, 0.0, 0.0)
                self._gauge_keys[kind] = self._gauge_keys.get(kind, set()) | keys

    def _file(self, kind: str) -> MmapedDict:
        store = self._files.get(kind)
        if store is None:
            store = self._files[kind] = MmapedDict(str(self.directory / f"{kind}_{self.pid}.db"))
        return store

    def close(self) -> None:
        """Closes the metric files and removes this worker's socket and ready marker."""
        for store in self._files.values():
            store.close()
        self._files.clear()
        for path in (self.socket_of(self.pid), self.ready_file(self.pid)):
            path.unlink(missing_ok=True)


def forget_worker(directory: Path, pid: int) -> None:
    """The arbiter's bookkeeping for a worker that exited: its live gauges and files go,
    and its process series (a gone process has no CPU or memory of its own to show)."""
    mark_process_dead(pid, str(directory))
    for name in (f"peer-{pid}.sock", f"ready-{pid}", f"{PER_WORKER_COUNTERS}_{pid}.db"):
        (directory / name).unlink(missing_ok=True)


def _per_bucket(family: Metric) -> list[Any]:
    """A histogram's samples as multiprocess files keep them: per bucket, not cumulative."""
    out: list[Any] = []
    previous: dict[tuple[tuple[str, str], ...], float] = {}
    for sample in family.samples:
        if sample.name.endswith("_bucket"):
            series = tuple(sorted((k, v) for k, v in sample.labels.items() if k != "le"))
            below = previous.get(series, 0.0)
            previous[series] = sample.value
            out.append(sample._replace(value=sample.value - below))
        elif sample.name.endswith("_sum"):
            out.append(sample)
    return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


CLUSTER: web.AppKey[Cluster] = web.AppKey("cluster", Cluster)


def cluster_of(app: web.Application) -> Cluster | None:
    """The app's Cluster when it is one of several workers, else None."""
    return app.get(CLUSTER)


def json_body(response: web.Response) -> Any:
    """The JSON a local handler answered, to merge with what the siblings answered."""
    with contextlib.suppress(ValueError, TypeError):
        return json.loads(response.body)  # type: ignore[arg-type]
    return None
