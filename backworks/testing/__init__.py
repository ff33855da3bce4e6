"""Test a plugin in a few lines, without a server: `Plugin(path).call(...)`.

    from backworks.testing import Plugin

    with Plugin("target/release/libweather_plugin.so") as plugin:
        answer = plugin.call("GET", "/weather/paris", endpoint="/weather/{city}",
                             params={"city": "paris"})
        assert answer.status == 200
        assert answer.json()["city"] == "paris"

The plugin is built the way `backworks serve` builds it (plugins/ and lifecycle/: the
trust checks, a private copy, `init` with its config, the runner's timeout, breaker
and isolation), so what a test sees is what the server would serve. Its settings are
the keys of a `plugins.<name>` entry in backworks.yaml, checked the same way.

`Plugin` is synchronous, so a plain test function can use it; it runs its plugin on
an event loop of its own in a thread, so an `async` test can use it too (`acall`).
The pytest fixture `backworks_plugin` (backworks/testing/pytest_plugin.py, registered
with pytest when Backworks is installed) closes every plugin a test opened.
"""

from backworks.testing.plugin import Answer, Plugin

__all__ = ["Answer", "Plugin"]
