"""The files of deploy/ checked as far as this machine allows, and a rolling restart behind nginx.

nginx is Debian's (`scripts/install-nginx` installs it); where it could not be
installed the nginx test skips and says so. There is no container engine or systemd
here: the Dockerfile's stages run their commands in a temporary root (all but the
ones that would change this machine: apt-get, useradd), the image's command and
health check then run against what they built; the systemd unit and the Kubernetes
manifest are parsed and held to the config they serve.
"""

from __future__ import annotations

import configparser
import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from backworks.cli.main import build_parser
from backworks.config import load_config
from tests.conftest import BuildPlugin
from tests.serving import KIT
from tests.test_serve import free_port, get, write_config
from tests.test_workers import Load, eventually

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
NGINX = Path(os.environ.get("BACKWORKS_NGINX", "/usr/sbin/nginx"))


class Backend:
    """One single-process `backworks serve` behind the balancer."""

    def __init__(self, folder: Path, config: Path, port: int) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "backworks", "serve", "--config", str(config),
             "--port", str(port)],
            cwd=folder,
            env={**os.environ, "BACKWORKS_CACHE_DIR": str(folder / "cache")},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip

    def health_is(self, status: int) -> Callable[[], bool]:
        return lambda: self.health() == status

    def health(self) -> int:
        try:
            return get(f"{self.url}/_backworks/health", timeout=2)[0]
        except OSError:
            return 0


@pytest.fixture
def backends() -> Iterator[list[Backend]]:
    started: list[Backend] = []
    yield started
    for backend in started:
        if backend.proc.poll() is None:
            backend.proc.kill()
            backend.proc.wait()


def nginx_main_config(folder: Path, site: Path) -> Path:
    """A whole nginx.conf around deploy/nginx.conf, with its files in `folder`."""
    temp = "".join(
        f"    {kind}_temp_path {folder / kind};\n"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    config = folder / "nginx-main.conf"
    config.write_text(
        f"daemon off;\nworker_processes 1;\npid {folder / 'nginx.pid'};\n"
        + ("user root;\n" if os.geteuid() == 0 else "")
        + f"error_log {folder / 'error.log'} warn;\n"
        "events { worker_connections 512; }\n"
        f"http {{\n    access_log off;\n{temp}    include {site};\n}}\n"
    )
    return config


def test_nginx_routes_around_servers_restarted_one_after_the_other_and_fails_no_request(
    tmp_path: Path, build_plugin: BuildPlugin, backends: list[Backend]
) -> None:
    _no_nginx()
    build_plugin(KIT, "kit", tmp_path / "plugins", extra_flags=('-DKIT_NAME="kit"',))
    ports = {"a": free_port(), "b": free_port()}
    for name in ports:
        (tmp_path / name).mkdir()
    configs = {
        name: write_config(
            tmp_path / name,
            {
                "plugin_discovery": {"directories": [str(tmp_path / "plugins")]},
                "endpoints": {
                    "/work": {"method": "GET", "runtime": {"type": "plugin", "handler": "kit"}}
                },
                "global_headers": {"x-served-by": name},
                "server": {"drain_delay_ms": 1500, "shutdown_timeout_ms": 5000},
                "logging": {"level": "warning", "format": "json"},
            },
        )
        for name in ports
    }
    servers = {name: Backend(tmp_path / name, configs[name], port) for name, port in ports.items()}
    backends.extend(servers.values())
    for server in servers.values():
        eventually(server.health_is(200), what="the backends ready")

    with nginx_in_front(tmp_path, ports) as url:
        eventually(lambda: _answers(f"{url}/work"), what="nginx proxying")
        load = Load(f"{url}/plugins/kit/sleep?ms=20", threads=6)
        try:
            eventually(lambda: load.total() > 100, what="the load running")
            for name in ("a", "b"):
                old = servers[name]
                old.proc.send_signal(signal.SIGTERM)
                # Readiness turns 503 at SIGTERM, while the server still accepts.
                eventually(old.health_is(503), what=f"{name} reporting 503")
                assert old.proc.wait(timeout=30) == 0
                eventually(grows(load, 50), what=f"serving without {name}")
                servers[name] = new = Backend(tmp_path / name, configs[name], ports[name])
                backends.append(new)
                eventually(new.health_is(200), what=f"{name} back")
                eventually(grows(load, 100), what=f"serving with {name}")
        finally:
            load.stop()
        assert load.failures == []
        assert load.total() > 500
        # nginx tries a server it saw refuse connections again after fail_timeout (2 s).
        seen: set[str] = set()

        def both_serving() -> bool:
            seen.add(_served_by(f"{url}/work"))
            return seen == {"a", "b"}

        eventually(both_serving, what="both restarted servers taking requests again")


@contextlib.contextmanager
def nginx_in_front(folder: Path, ports: dict[str, int]) -> Iterator[str]:
    """deploy/nginx.conf as shipped, pointed at `ports` a and b; yields its URL."""
    site = folder / "backworks.conf"
    listen = free_port()
    site.write_text(
        (DEPLOY / "nginx.conf")
        .read_text()
        .replace("127.0.0.1:3000", f"127.0.0.1:{ports['a']}")
        .replace("127.0.0.1:3001", f"127.0.0.1:{ports['b']}")
        .replace("listen 8080;", f"listen 127.0.0.1:{listen};")
    )
    main = nginx_main_config(folder, site)
    checked = subprocess.run([str(NGINX), "-t", "-c", str(main)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr
    nginx = subprocess.Popen([str(NGINX), "-c", str(main)], stderr=subprocess.DEVNULL)
    try:
        yield f"http://127.0.0.1:{listen}"
    finally:
        nginx.send_signal(signal.SIGQUIT)
        nginx.wait(timeout=30)


def _no_nginx() -> None:
    if not NGINX.exists():
        pytest.skip(
            f"no nginx at {NGINX}: scripts/install-nginx installs Debian's nginx "
            "(it needs root and apt-get), or set BACKWORKS_NGINX to an nginx binary"
        )


def test_nginx_answers_a_plugins_own_504_once_and_keeps_both_servers_in_rotation(
    tmp_path: Path, build_plugin: BuildPlugin, backends: list[Backend]
) -> None:
    """A slow call's 504 is the plugin's answer, not a dead server: nginx neither runs
    the call again on the other server nor takes the first out for fail_timeout."""
    _no_nginx()
    build_plugin(KIT, "kit", tmp_path / "plugins", extra_flags=('-DKIT_NAME="kit"',))
    ports = {"a": free_port(), "b": free_port()}
    servers = {}
    for name, port in ports.items():
        (tmp_path / name).mkdir()
        config = write_config(
            tmp_path / name,
            {
                "plugin_discovery": {"directories": [str(tmp_path / "plugins")]},
                "plugins": {"kit": {"timeout_ms": 200}},
                "global_headers": {"x-served-by": name},
                "logging": {"level": "warning", "format": "json"},
            },
        )
        servers[name] = Backend(tmp_path / name, config, port)
    backends.extend(servers.values())
    for server in servers.values():
        eventually(server.health_is(200), what="the backends ready")
    with nginx_in_front(tmp_path, ports) as url:
        eventually(lambda: _answers(f"{url}/plugins/kit/echo"), what="nginx proxying")
        before = {name: _calls(server) for name, server in servers.items()}
        status, _body = get(f"{url}/plugins/kit/wait?ms=3000", timeout=30)
        assert status == 504
        after = {name: _calls(server) for name, server in servers.items()}
        ran = sum(after[n] - before[n] for n in servers)
        assert ran == 1, f"the slow call ran {ran} times: {before} -> {after}"
        # Both servers stay in rotation: well within fail_timeout (2 s), both answer.
        seen = {_served_by(f"{url}/plugins/kit/echo") for _ in range(6)}
        assert seen == {"a", "b"}


def _calls(backend: Backend) -> int:
    status, body = get(f"{backend.url}/_backworks/plugins", timeout=5)
    assert status == 200
    rows = json.loads(body)
    rows = rows["plugins"] if isinstance(rows, dict) else rows
    (kit,) = [row for row in rows if row["name"] == "kit"]
    return int(kit["counters"]["calls"])


def grows(load: Load, by: int) -> Callable[[], bool]:
    """True once `load` has sent `by` more requests than now."""
    start = load.total()
    return lambda: load.total() > start + by


def _answers(url: str) -> bool:
    try:
        return get(url, timeout=2)[0] == 200
    except OSError:
        return False


def _served_by(url: str) -> str:
    import urllib.request

    with urllib.request.urlopen(url, timeout=10) as resp:  # noqa: S310 -- loopback
        return str(resp.headers["x-served-by"])


# -- the files of deploy/ ------------------------------------------------------------


def test_the_deploy_config_is_valid_and_drains_before_stopping() -> None:
    config = load_config(DEPLOY / "backworks.yaml")
    assert config.server.drain_delay_ms > 0
    assert config.logging.format == "json"


def serve_args(argv: list[str]) -> Any:
    """`argv` (from `backworks` on) parsed by the real command line."""
    assert Path(argv[0]).name == "backworks", argv
    args = build_parser().parse_args(argv[1:])
    assert args.run.__name__ == "cmd_serve"
    return args


def test_the_systemd_unit_runs_serve_and_stops_within_its_drain() -> None:
    unit = configparser.ConfigParser(interpolation=None, strict=False)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read(DEPLOY / "backworks.service")
    service = unit["Service"]
    args = serve_args(shlex.split(service["ExecStart"]))
    assert args.config == Path(service["WorkingDirectory"]) / "backworks.yaml"
    assert service["ExecReload"].endswith("kill -HUP $MAINPID")
    assert service["KillSignal"] == "SIGTERM"
    assert service["User"] != "root"
    server = load_config(DEPLOY / "backworks.yaml").server
    assert (
        int(service["TimeoutStopSec"]) * 1000 > server.drain_delay_ms + server.shutdown_timeout_ms
    )
    assert unit["Install"]["WantedBy"] == "multi-user.target"
    analyze = shutil.which("systemd-analyze")
    if analyze is not None:  # absent in containers; where it exists, it has its say
        result = subprocess.run(
            [analyze, "verify", str(DEPLOY / "backworks.service")],
            capture_output=True,
            text=True,
        )
        assert "Unknown" not in result.stderr, result.stderr


def test_the_systemd_unit_is_rated_ok_by_systemd_analyze_security() -> None:
    """8.5 EXPOSED with the first unit; the hardening brings it to 4.0 or less (OK)."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("no systemd-analyze here (Debian's `systemd` package has it)")
    result = subprocess.run(
        [analyze, "security", "--offline=yes", "--no-pager", str(DEPLOY / "backworks.service")],
        capture_output=True, text=True,
    )  # fmt: skip
    found = re.search(r"Overall exposure level for \S+: ([0-9.]+) (\w+)", result.stdout)
    assert found is not None, result.stdout[-2000:] + result.stderr[-2000:]
    assert float(found[1]) <= 4.0, result.stdout
    assert found[2] == "OK"


def test_the_systemd_unit_leaves_out_memory_deny_write_execute_which_stops_the_host() -> None:
    """MemoryDenyWriteExecute forbids memory that is written, then run: cffi's callbacks
    (the host's log function every plugin is handed) are such memory. Simulated with the
    kernel's own switch for the same rule (PR_SET_MDWE), where this kernel has it."""
    unit = (DEPLOY / "backworks.service").read_text()
    assert not re.search(r"^MemoryDenyWriteExecute=\s*(yes|true|1)", unit, re.MULTILINE)
    denied = (
        "import ctypes, sys\n"
        "if ctypes.CDLL(None).prctl(65, 1, 0, 0, 0) != 0: sys.exit(3)\n"  # PR_SET_MDWE
        "import backworks.abi.native\n"
    )
    result = subprocess.run([sys.executable, "-c", denied], capture_output=True, text=True)
    if result.returncode == 3:
        pytest.skip("this kernel has no PR_SET_MDWE (Linux 6.3+)")
    assert result.returncode != 0
    assert "write+execute memory for ffi.callback" in result.stderr
    allowed = subprocess.run([sys.executable, "-c", "import backworks.abi.native"])
    assert allowed.returncode == 0


def test_the_kubernetes_manifest_probes_and_drains_what_the_config_serves() -> None:
    docs = list(yaml.safe_load_all((DEPLOY / "kubernetes.yaml").read_text()))
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    service = next(d for d in docs if d["kind"] == "Service")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    args = serve_args(container["args"])
    config = load_config(DEPLOY / "backworks.yaml")
    port = next(p for p in container["ports"] if p["name"] == "http")["containerPort"]
    assert port == config.server.port
    ready = container["readinessProbe"]["httpGet"]
    assert ready["path"] == "/_backworks/health"
    assert ready["port"] == "http"
    assert "tcpSocket" in container["livenessProbe"], "liveness must not fail while draining"
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    budget = int(pre_stop[1]) * 1000 + config.server.drain_delay_ms
    budget += config.server.shutdown_timeout_ms
    assert pod["terminationGracePeriodSeconds"] * 1000 > budget
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert args.workers >= 1
    assert {e["name"]: e["value"] for e in container["env"]}["BACKWORKS_HOST"] == "0.0.0.0"


def restricted_violations(pod: dict[str, Any]) -> list[str]:
    """What Pod Security "restricted" (v1.30: baseline and restricted) refuses in `pod`."""
    found = []
    pod_sc = pod.get("securityContext", {})
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(key):
            found.append(f"spec.{key}")
    allowed_volumes = {
        "configMap", "csi", "downwardAPI", "emptyDir", "ephemeral",
        "persistentVolumeClaim", "projected", "secret",
    }  # fmt: skip
    for volume in pod.get("volumes", []):
        kinds = set(volume) - {"name"}
        if not kinds <= allowed_volumes:
            found.append(f"volume {volume['name']}: {sorted(kinds - allowed_volumes)}")
    containers = pod.get("containers", []) + pod.get("initContainers", [])
    for c in containers:
        sc = c.get("securityContext", {})

        def pick(key: str, sc: dict[str, Any] = sc) -> Any:
            return sc.get(key, pod_sc.get(key))

        where = f"container {c['name']}"
        if sc.get("privileged"):
            found.append(f"{where}: privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            found.append(f"{where}: allowPrivilegeEscalation must be false")
        if pick("runAsNonRoot") is not True:
            found.append(f"{where}: runAsNonRoot must be true")
        if pick("runAsUser") == 0:
            found.append(f"{where}: runAsUser 0")
        seccomp = (pick("seccompProfile") or {}).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            found.append(f"{where}: seccompProfile.type must be RuntimeDefault or Localhost")
        caps = sc.get("capabilities", {})
        if "ALL" not in caps.get("drop", []):
            found.append(f"{where}: capabilities must drop ALL")
        if set(caps.get("add", [])) - {"NET_BIND_SERVICE"}:
            found.append(f"{where}: adds capabilities {caps['add']}")
        if any("hostPort" in port for port in c.get("ports", [])):
            found.append(f"{where}: hostPort")
    return found


def test_the_kubernetes_pod_is_admissible_under_pod_security_restricted() -> None:
    docs = list(yaml.safe_load_all((DEPLOY / "kubernetes.yaml").read_text()))
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert restricted_violations(pod) == []
    # The checker itself refuses what the first manifest had: no seccomp profile.
    loose = {**pod, "securityContext": {"runAsNonRoot": True}}
    assert any("seccompProfile" in v for v in restricted_violations(loose))


def test_the_kubernetes_manifest_pins_its_image_keeps_a_pod_and_is_scraped() -> None:
    docs = list(yaml.safe_load_all((DEPLOY / "kubernetes.yaml").read_text()))
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    template = deployment["spec"]["template"]
    (container,) = template["spec"]["containers"]
    image = container["image"]
    tag = image.split("@")[0].rpartition(":")[2]
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert "@sha256:" in image or tag == version, f"{image}: pin this release ({version})"
    budget = next(d for d in docs if d["kind"] == "PodDisruptionBudget")
    assert budget["spec"]["selector"] == deployment["spec"]["selector"]
    assert 1 <= budget["spec"]["minAvailable"] < deployment["spec"]["replicas"]
    notes = template["metadata"]["annotations"]
    config = load_config(DEPLOY / "backworks.yaml")
    assert notes["prometheus.io/scrape"] == "true"
    assert int(notes["prometheus.io/port"]) == config.server.port
    assert notes["prometheus.io/path"] == "/metrics"


# -- the Dockerfile ------------------------------------------------------------------


def dockerfile_stages(text: str) -> list[list[tuple[str, str]]]:
    """The Dockerfile's instructions (continuations joined), one list per FROM."""
    stages: list[list[tuple[str, str]]] = []
    logical = ""
    for raw in text.splitlines():
        if not logical and (not raw.strip() or raw.lstrip().startswith("#")):
            continue
        logical += raw.rstrip("\\").rstrip() + " " if raw.endswith("\\") else raw
        if raw.endswith("\\"):
            continue
        keyword, _, rest = logical.strip().partition(" ")
        logical = ""
        if keyword.upper() == "FROM":
            stages.append([])
        stages[-1].append((keyword.upper(), rest.strip()))
    return stages


# What a temporary root cannot do: they would change this machine, not the root.
_MACHINE_WIDE = ("apt-get", "useradd")
# The build stage takes its Rust toolchain from the official image, pinned by version.
RUST_IMAGE = "rust"
_TOOLCHAIN_ENV = frozenset({"PATH", "RUSTUP_HOME", "CARGO_HOME"})
# The first Rust release of each edition: a crate of that edition needs at least it.
_EDITION_NEEDS = {"2015": (1, 0), "2018": (1, 31), "2021": (1, 56), "2024": (1, 85)}


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("."))


def test_the_dockerfile_installs_a_rust_that_meets_every_crate_it_builds() -> None:
    """Debian bookworm's cargo (rustc 1.63) cannot build an edition-2024 crate: the
    build stage pins the official Rust image, at least every crate's rust-version."""
    (build, _runtime) = dockerfile_stages((DEPLOY / "Dockerfile").read_text())
    assert not any(
        k == "RUN" and any(w in v.split() for w in ("cargo", "rustc")) for k, v in build
    ), "no distribution cargo: it is too old"
    copied = [v.split()[0] for k, v in build if k == "COPY" and v.startswith("--from=")]
    toolchains = {c.removeprefix("--from=") for c in copied if c != "--from=build"}
    (image,) = toolchains
    name, _, tag = image.partition(":")
    assert name == RUST_IMAGE, image
    pinned = _version(tag.split("-")[0])
    assert len(pinned) >= 2, f"{image}: pin a version, not a moving tag"
    # Every crate the image builds: what its COPY lines bring in.
    folders = [REPO / v.split()[0] for k, v in build if k == "COPY" and not v.startswith("-")]
    crates = [m for f in folders if f.is_dir() for m in f.rglob("Cargo.toml")]
    crates = [c for c in crates if "target" not in c.parts]
    assert any(c.parent.name == "weather-plugin" for c in crates), crates
    for manifest in crates:
        package = tomllib.loads(manifest.read_text()).get("package", {})
        needs: list[tuple[int, ...]] = [_EDITION_NEEDS[str(package.get("edition", "2015"))]]
        if "rust-version" in package:
            needs.append(_version(str(package["rust-version"])))
        need = max(needs)
        assert pinned >= need, f"{manifest}: needs Rust {need}, the Dockerfile pins {image}"


def test_the_dockerfile_builds_where_a_docker_daemon_runs() -> None:
    docker = shutil.which("docker")
    if docker is None or subprocess.run([docker, "info"], capture_output=True).returncode:
        pytest.skip("no Docker daemon here: the temporary-root test stands in for the build")
    result = subprocess.run(
        [docker, "build", "-f", str(DEPLOY / "Dockerfile"), "-t", "backworks:test", str(REPO)],
        capture_output=True, text=True, timeout=1800,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]


def test_the_dockerfile_builds_and_its_image_serves_in_a_temporary_root(
    tmp_path: Path, cargo_target: Path
) -> None:
    stages = dockerfile_stages((DEPLOY / "Dockerfile").read_text())
    assert len(stages) == 2, "multi-stage: build, then a slim runtime"
    build, runtime = stages
    assert dict(build)["FROM"].endswith(" AS build")
    assert dict(build)["FROM"].split()[0] == dict(runtime)["FROM"], "one base for both"
    run_stage = dict(runtime)
    assert run_stage["USER"] not in ("root", "0"), "the image does not run as root"
    assert not any(k == "RUN" and ("gcc" in v or "cargo" in v) for k, v in runtime)

    # Each stage has a root of its own, as each has its own filesystem in a build.
    build_root, root = tmp_path / "build", tmp_path / "image"
    env = {**os.environ, "CARGO_TARGET_DIR": str(cargo_target)}

    def at(path: str, workdir: Path, stage_root: Path) -> Path:
        return stage_root / path.lstrip("/") if path.startswith("/") else workdir / path

    def run(command: str, workdir: Path, stage_root: Path, stage_env: dict[str, str]) -> None:
        if any(word in command for word in _MACHINE_WIDE):
            return
        # Absolute paths of the image are paths under the stage's root.
        for absolute in ("/wheels", "/src"):
            command = command.replace(f" {absolute}", f" {stage_root}{absolute}")
        command = command.replace("python3 ", f"{sys.executable} ")
        result = subprocess.run(  # noqa: S602 -- the Dockerfile's own shell commands
            command, shell=True, cwd=workdir, env={**env, **stage_env},
            capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert result.returncode == 0, f"{command}\n{result.stdout[-2000:]}{result.stderr[-3000:]}"

    for stage, stage_root in ((build, build_root), (runtime, root)):
        workdir, stage_env = stage_root, {}
        stage_root.mkdir()
        for keyword, rest in stage:
            if keyword == "WORKDIR":
                workdir = at(rest, stage_root, stage_root)
                workdir.mkdir(parents=True, exist_ok=True)
            elif keyword == "COPY":
                words = rest.split()
                sources, target = words[:-1], words[-1]
                if sources[0].startswith(f"--from={RUST_IMAGE}:"):
                    continue  # the pinned toolchain: this machine's cargo stands in for it
                if sources[0] == "--from=build":
                    paths = [at(source, build_root, build_root) for source in sources[1:]]
                else:
                    paths = [REPO / source for source in sources]
                for src in paths:
                    dest = at(target, workdir, stage_root)
                    dest = dest / src.name if target.endswith("/") else dest
                    if src.is_dir():
                        shutil.copytree(src, dest, dirs_exist_ok=True, ignore=_not_built)
                    else:
                        dest.parent.mkdir(parents=True, exist_ok=True)
                        shutil.copy(src, dest)
            elif keyword == "ENV":
                pairs = dict(pair.split("=", 1) for pair in shlex.split(rest))
                # Where the image keeps its toolchain; here, where this machine keeps its own.
                stage_env.update({k: v for k, v in pairs.items() if k not in _TOOLCHAIN_ENV})
            elif keyword == "RUN" and "pip install" in rest:
                # The runtime stage installs the wheel: here into a folder of its root,
                # with the dependencies this test environment already has.
                (wheel,) = (root / "wheels").glob("backworks-*.whl")
                site = root / "site"
                install = f"python3 -m pip install -q --no-deps --no-index --target {site} {wheel}"
                run(install, workdir, stage_root, stage_env)
            elif keyword == "RUN":
                run(rest, workdir, stage_root, stage_env)

    app = root / "srv" / "backworks"
    assert sorted(p.name for p in (app / "plugins").iterdir()) == [
        "libhello.so",
        "libweather_plugin.so",
    ]
    command = json.loads(run_stage["CMD"])
    port = free_port()
    serve_env = {
        **os.environ,
        **dict(pair.split("=", 1) for pair in shlex.split(run_stage["ENV"])),
        "BACKWORKS_HOST": "127.0.0.1",
        "BACKWORKS_CACHE_DIR": str(tmp_path / "cache"),
        "PYTHONPATH": str(root / "site"),
    }
    log = tmp_path / "server.log"
    log_file = log.open("wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "backworks", *command[1:], "--port", str(port)],
        cwd=app, env=serve_env, stdout=subprocess.DEVNULL, stderr=log_file,
    )  # fmt: skip
    try:
        health = json.loads(run_stage["HEALTHCHECK"].partition("CMD ")[2])
        probe = [sys.executable if w == "python3" else w for w in health]
        probe[-1] = probe[-1].replace("127.0.0.1:3000", f"127.0.0.1:{port}")

        def healthy() -> bool:
            assert server.poll() is None, log.read_text()[-3000:]
            return subprocess.run(probe, capture_output=True, env=serve_env).returncode == 0

        eventually(healthy, what="the image's HEALTHCHECK passing")
        status, body = get(f"http://127.0.0.1:{port}/hello")
        assert (status, json.loads(body)) == (200, {"hello": "world"})
        assert get(f"http://127.0.0.1:{port}/weather/paris")[0] == 200
        version = subprocess.run(
            [sys.executable, "-c", "import backworks; print(backworks.__file__)"],
            cwd=app, env=serve_env, capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        assert version.startswith(str(root / "site")), "served from the installed wheel"
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
        log_file.close()


def _not_built(folder: str, names: list[str]) -> set[str]:
    """What a build context leaves out (.dockerignore's job): build output and caches."""
    return {n for n in names if n in ("target", "__pycache__", ".mypy_cache")}
