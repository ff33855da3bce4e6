"""Process isolation: a plugin's calls run in worker processes (`isolation: process`).

- backend.py: `ProcessBackend`, the runner's Backend: routes calls to workers, sends
  calls lost in a crash again, answers poison requests;
- calls.py: a call as the host holds it, and what becomes of calls lost in a crash;
- supervisor.py: the worker slots: spawn, ready, death, backoff, recycling, stop;
- probe.py: a library's descriptor, read in a worker;
- process.py: one worker process as the host holds it (channel, running table,
  memory, signals, reaping);
- framing.py: the wire codec between host and worker;
- child.py: the worker process's own main (`python -m backworks.isolation.child`):
  it loads one plugin and serves the host's calls.

This face imports nothing: a worker process imports the package on its way to
child.py, and must not pay for the host side.
"""
