"""The wheel stands alone: built, installed into a fresh venv, it scaffolds, builds and
serves a C and a Rust plugin with nothing of this checkout.

Slow for a test (a wheel build, a venv, a Rust build of the SDK), so the venv is made
once per session; pip's cache keeps the dependencies' downloads out of the time.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from tests.cbuild import EXT
from tests.test_serve import free_port, get
from tests.test_workers import eventually

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.packaging


def run(*args: str | Path, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        [str(a) for a in args],
        cwd=cwd,
        # Nothing of this checkout leaks into the venv's processes.
        env={**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, **(env or {})},
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    assert done.returncode == 0, f"{args}: {done.stdout[-2000:]}{done.stderr[-3000:]}"
    return done.stdout


@pytest.fixture(scope="session")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    run(sys.executable, "-m", "pip", "wheel", REPO, "--no-deps", "-q", "-w", out)
    (built,) = out.glob("backworks-*.whl")
    return built


@pytest.fixture(scope="session")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv (no system site-packages, nothing of the checkout) with the wheel."""
    root = tmp_path_factory.mktemp("venv") / "venv"
    run(sys.executable, "-m", "venv", root)
    run(root / "bin" / "python", "-m", "pip", "install", "-q", wheel)
    return root


def test_the_wheel_holds_types_license_metadata_headers_and_the_rust_sdk(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        metadata = archive.read("backworks-0.1.0.dist-info/METADATA").decode()
        entry_points = archive.read("backworks-0.1.0.dist-info/entry_points.txt").decode()
    assert "backworks/py.typed" in names
    assert "backworks-0.1.0.dist-info/licenses/LICENSE" in names
    assert "backworks/include/backworks/plugin.h" in names
    assert "backworks/sdk-rust/backworks-plugin-sdk/Cargo.toml" in names
    assert "backworks/sdk-rust/backworks-plugin-macros/src/lib.rs" in names
    # The compiled step (abi/step.c) is the wheel's one native file; no plugin or
    # Rust build output rides along.
    native = [n for n in names if "/target/" in n or n.endswith(".so")]
    assert [n for n in native if not n.startswith("backworks/abi/_step.")] == [], native
    assert "License-Expression: MIT" in metadata
    assert "Classifier: Typing :: Typed" in metadata
    assert "Project-URL: Repository," in metadata
    assert "[pytest11]" in entry_points


def test_an_installed_wheel_scaffolds_builds_and_serves_c_and_rust_plugins(
    venv: Path, tmp_path: Path
) -> None:
    backworks = venv / "bin" / "backworks"
    work = tmp_path / "work"
    work.mkdir()
    run(backworks, "new", "plugin", "greet-c", "--lang", "c", cwd=work)
    run(backworks, "new", "plugin", "greet-rs", "--lang", "rust", cwd=work)
    manifest = (work / "greet-rs" / "Cargo.toml").read_text()
    where = "import backworks; print(backworks.__file__)"
    # -I: not the current folder on sys.path (a checkout's backworks/ would answer).
    site = Path(run(venv / "bin" / "python", "-I", "-c", where, cwd=work).strip())
    sdk = site.parent / "sdk-rust" / "backworks-plugin-sdk"
    assert f'backworks-plugin-sdk = {{ path = "{sdk.as_posix()}" }}' in manifest
    assert str(REPO) not in manifest, "the installed copy, not this checkout"

    run("make", cwd=work / "greet-c")
    target = tmp_path / "cargo-target"
    run("cargo", "build", "--offline", cwd=work / "greet-rs", env={"CARGO_TARGET_DIR": str(target)})
    # The README's plugin test, as an author runs it with the installed package.
    check = (
        "from backworks.testing import Plugin\n"
        f"with Plugin({str(target / 'debug' / f'libgreet_rs_plugin.{EXT}')!r},"
        " config={'greeting': 'hi'}) as p:\n"
        "    a = p.call('GET', '/hello/ada', endpoint='/hello/{name}', params={'name': 'ada'})\n"
        "    print(a.status, a.json()['message'])\n"
    )
    out = run(venv / "bin" / "python", "-I", "-c", check, cwd=work)
    assert out.splitlines()[-1] == "200 hi, ada!", out  # after the plugin's own log line
    plugins = work / "plugins"
    plugins.mkdir()
    shutil.copy(work / "greet-c" / f"libgreet-c.{EXT}", plugins)
    shutil.copy(target / "debug" / f"libgreet_rs_plugin.{EXT}", plugins)
    (work / "backworks.yaml").write_text(
        yaml.safe_dump({"plugin_discovery": {"enabled": True, "directories": ["./plugins"]}})
    )

    port = free_port()
    log = (tmp_path / "serve.log").open("wb")
    server = subprocess.Popen(
        [backworks, "serve", "--port", str(port)],
        cwd=work,
        env={
            **{k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
            "BACKWORKS_CACHE_DIR": str(tmp_path / "cache"),
        },
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        url = f"http://127.0.0.1:{port}"

        def ready() -> bool:
            assert server.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            try:
                return get(f"{url}/_backworks/health", timeout=2)[0] == 200
            except OSError:
                return False

        eventually(ready, timeout=60, what="the installed backworks serving")
        for name in ("greet-c", "greet-rs"):
            status, body = get(f"{url}/plugins/{name}/hello?name=Ada")
            assert status == 200, body
            assert json.loads(body) == {"plugin": name, "message": "hello, Ada!"}
    finally:
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=60) == 0
        log.close()
