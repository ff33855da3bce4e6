"""The log stream is one JSON object per line, always; spans have a stream of their own."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import BuildPlugin
from tests.test_serve import KIT, Server, get, write_config


def json_lines(text: str) -> list[dict[str, object]]:
    lines = text.splitlines()
    assert lines, "nothing was logged"
    parsed = []
    for line in lines:
        try:
            parsed.append(json.loads(line))
        except ValueError:
            pytest.fail(f"a line of the log is not JSON: {line!r}")
    return parsed


def test_standard_library_records_and_warnings_are_json_lines_too() -> None:
    """aiohttp's or gunicorn's records and Python's warnings join the JSON stream."""
    script = textwrap.dedent(
        """
        import logging, warnings
        import structlog
        from backworks.logs import configure_logging
        configure_logging("info", "json")
        structlog.get_logger("backworks.server").info("ours", n=1)
        logging.getLogger("aiohttp.server").error("Error handling request\\nsecond line")
        try:
            1 / 0
        except ZeroDivisionError:
            logging.getLogger("asyncio").exception("loop trouble")
        warnings.warn("old knob", DeprecationWarning, stacklevel=1)
        logging.getLogger("gunicorn.error").debug("below the level: not written")
        """
    )
    done = subprocess.run(
        [sys.executable, "-W", "always", "-c", script], capture_output=True, text=True, check=True
    )
    assert done.stdout == ""
    events = json_lines(done.stderr)
    by_event = {str(e["event"]).splitlines()[0]: e for e in events}
    assert by_event["ours"]["n"] == 1
    assert by_event["Error handling request"]["logger"] == "aiohttp.server"
    assert by_event["Error handling request"]["level"] == "error"
    assert "ZeroDivisionError" in str(by_event["loop trouble"]["exception"])
    assert any("old knob" in str(e["event"]) for e in events), events
    assert not any("below the level" in str(e["event"]) for e in events)


def test_console_spans_go_to_their_own_file_one_json_object_per_line(
    tmp_path: Path, build_plugin: BuildPlugin, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("opentelemetry.sdk")
    build_plugin(KIT, name="kit", folder=tmp_path / "plugins")
    spans = tmp_path / "spans.jsonl"
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")
    monkeypatch.setenv("BACKWORKS_SPANS_FILE", str(spans))
    config = write_config(
        tmp_path,
        {
            "logging": {"format": "json"},
            "plugin_discovery": {"enabled": True, "directories": ["./plugins"]},
        },
    )
    server = Server(config, tmp_path)
    try:
        server.wait_ready()
        assert get(f"{server.url}/plugins/kit/status?code=200")[0] == 200
    finally:
        code, events = server.stop()  # stop() parses every stderr line as JSON
    assert code == 0
    assert any(e["event"] == "tracing_on" for e in events)
    written = json_lines(spans.read_text())
    names = {str(span["name"]) for span in written}
    assert "GET /plugins/{plugin}/{tail:.*}" in names, names
    assert "plugin kit handle" in names, names
