"""Typed keys for what an aiohttp app of Backworks holds.

The main app and the separate admin app (`dashboard.port`) hold the same objects, so
both answer from one Host, one request record and one metrics registry.
"""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CollectorRegistry

from backworks.host import Host
from backworks.traffic import Traffic

HOST: web.AppKey[Host] = web.AppKey("host", Host)
TRAFFIC: web.AppKey[Traffic] = web.AppKey("traffic", Traffic)
METRICS: web.AppKey[CollectorRegistry] = web.AppKey("metrics", CollectorRegistry)
