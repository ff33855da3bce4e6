"""Typed keys for what an aiohttp app of Backworks holds.

The main app and the separate admin app (`dashboard.port`) hold the same objects, so
both answer from one Host and Reloader, one edge (request ids, record) and one
metrics registry.
"""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CollectorRegistry

from backworks.http.edge import Edge
from backworks.http.record import Recorder
from backworks.http.traffic import Traffic
from backworks.lifecycle.host import Host
from backworks.lifecycle.reloader import Reloader

HOST: web.AppKey[Host] = web.AppKey("host", Host)
RELOADER: web.AppKey[Reloader] = web.AppKey("reloader", Reloader)
TRAFFIC: web.AppKey[Traffic] = web.AppKey("traffic", Traffic)
RECORDER: web.AppKey[Recorder] = web.AppKey("recorder", Recorder)
EDGE: web.AppKey[Edge] = web.AppKey("edge", Edge)
METRICS: web.AppKey[CollectorRegistry] = web.AppKey("metrics", CollectorRegistry)
