"""The README's first minutes, as a new user follows them: `make run`, then its URLs.

The commands are read from the README itself, so the README and the example config
cannot drift apart. The only change: `make run PORT=<free port>`, and the URLs with
that port, so that the test never fights another server for port 3000.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from pathlib import Path

from tests.test_serve import free_port, get
from tests.test_workers import eventually

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"


def quick_start() -> list[str]:
    """The commands of the README's quick start, in order, without their comments."""
    head = README.read_text().split("\n## ", 1)[0]
    commands = [
        line.strip().split("  #")[0].strip()
        for line in head.splitlines()
        if line.startswith("    ") and re.match(r"\s+(make|curl|open) ", line)
    ]
    return [c for c in commands if c != "make test"]


def test_the_readme_quick_start_commands_work_as_written(tmp_path: Path) -> None:
    commands = quick_start()
    assert commands[0] == "make run"
    urls = [c.split(" ", 1)[1] for c in commands[1:]]
    assert [c.split(" ", 1)[0] for c in commands[1:]] == ["curl"] * (len(urls) - 1) + ["open"]
    assert all(re.match(r"(http://)?localhost:3000/", u) for u in urls), urls

    port = free_port()
    log = (tmp_path / "make-run.log").open("wb")
    make = subprocess.Popen(
        ["make", "run", f"PORT={port}"],
        cwd=REPO,
        env={**os.environ, "BACKWORKS_CACHE_DIR": str(tmp_path / "cache")},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # make and the server it starts: one group to stop
    )
    try:

        def serving() -> bool:
            assert make.poll() is None, (tmp_path / "make-run.log").read_text()[-3000:]
            try:
                return get(f"http://127.0.0.1:{port}/_backworks/health", timeout=2)[0] == 200
            except OSError:
                return False

        eventually(serving, timeout=300, what="make run serving")  # it builds the plugins
        answers = {}
        for url in urls:
            local = re.sub(r"^(http://)?localhost:3000", f"http://127.0.0.1:{port}", url)
            answers[url] = get(local)
        for url, (status, _) in answers.items():
            assert status == 200, f"{url}: {status} {answers[url][1][:300]!r}"
        assert json.loads(answers["localhost:3000/hello?name=Ada"][1]) == {"hello": "Ada"}
        assert json.loads(answers["localhost:3000/weather/paris"][1])["city"].lower() == "paris"
        page = answers["http://localhost:3000/_backworks/"][1].decode()
        assert "<title>Backworks</title>" in page
    finally:
        os.killpg(make.pid, signal.SIGTERM)
        make.wait(timeout=60)
        log.close()
