"""The route table: which endpoint answers a method and path, built from the config.

Backworks keeps its own immutable table instead of registering routes with aiohttp,
because aiohttp's router is frozen once the app starts and a config reload must swap
every route at once: a new table is built beside the old one and replaces it in a
single assignment, so a request sees either the old routes or the new, never a mix.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Generic, NamedTuple, TypeVar

import attrs

from backworks.abi import Response
from backworks.config import Config
from backworks.names import ALL_METHODS

T = TypeVar("T")

DEFAULT_CONTENT_TYPE = "application/json"
AUTO_MOUNT_PATTERNS = ("/plugins/{plugin}", "/plugins/{plugin}/{tail:.*}")

_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(?::([^{}]+))?\}")


def compile_pattern(pattern: str) -> re.Pattern[str] | None:
    """`/weather/{city}` -> a regex with a named group per parameter; None if static.

    A parameter matches one path segment; `{tail:.*}` gives it a regex of its own.
    """
    if "{" not in pattern:
        return None
    parts, last = [], 0
    for m in _PARAM.finditer(pattern):
        parts.append(re.escape(pattern[last : m.start()]))
        parts.append(f"(?P<{m[1]}>{m[2] or '[^/]+'})")
        last = m.end()
    parts.append(re.escape(pattern[last:]))
    return re.compile("".join(parts))


@attrs.frozen
class Route(Generic[T]):
    """One entry of the table: a path pattern, the methods it takes, what answers it."""

    pattern: str
    methods: frozenset[str]
    target: T
    regex: re.Pattern[str] | None = attrs.field(
        default=attrs.Factory(lambda self: compile_pattern(self.pattern), takes_self=True)
    )


class Match(NamedTuple, Generic[T]):
    """The route that matched a request, and the path parameters it captured."""

    route: Route[T]
    params: tuple[tuple[str, str], ...]


class NoRoute(Exception):
    """No route matches the path (404), or none takes the method (405, `allowed`)."""

    def __init__(self, allowed: frozenset[str] = frozenset()) -> None:
        self.allowed = allowed
        super().__init__(sorted(allowed))


class RouteTable(Generic[T]):
    """Static paths resolve with one dict lookup; patterned ones in declaration order."""

    def __init__(self, routes: Iterable[Route[T]]) -> None:
        self.routes = tuple(routes)
        # A static path's matches are made once: a request for one allocates nothing.
        self._static: dict[str, list[Match[T]]] = {}
        self._dynamic: list[Route[T]] = []
        for route in self.routes:
            if route.regex is None:
                self._static.setdefault(route.pattern, []).append(Match(route, ()))
            else:
                self._dynamic.append(route)

    def match(self, method: str, path: str) -> Match[T]:
        """The route for `method` and `path`; raises NoRoute (with the allowed methods)."""
        allowed: set[str] = set()
        for match in self._static.get(path, ()):
            methods = match.route.methods
            if method in methods or (method == "HEAD" and "GET" in methods):
                return match
            allowed |= methods
        for route in self._dynamic:
            assert route.regex is not None
            m = route.regex.fullmatch(path)
            if m is None:
                continue
            if method in route.methods or (method == "HEAD" and "GET" in route.methods):
                return Match(route, tuple(_params(m.groupdict())))
            allowed |= route.methods
        raise NoRoute(frozenset(allowed))


def _params(groups: Mapping[str, str | None]) -> Iterable[tuple[str, str]]:
    return ((k, v or "") for k, v in groups.items())


# -- routes that can never match ------------------------------------------------

# What one segment of a pattern is, for comparing patterns: a literal, or `{name}` (any
# one segment). Anything else (`{tail:.*}`, `file{ext}`) is "other": not compared.
_ANY = "{}"


def _segments(pattern: str) -> list[str | None] | None:
    parts: list[str | None] = []
    for segment in pattern.split("/"):
        whole = _PARAM.fullmatch(segment)
        if whole is not None and whole[2] is None:
            parts.append(_ANY)
        elif "{" in segment:
            return None
        else:
            parts.append(segment)
    return parts


def _covers(earlier: str, later: str) -> bool:
    """True when every path `later` matches is matched by `earlier` (checked first)."""
    if earlier == later:
        return True
    a, b = _segments(earlier), _segments(later)
    if a is None or b is None or len(a) != len(b):
        return False
    return all(x == _ANY or (x == y and y != _ANY) for x, y in zip(a, b, strict=True))


def _taken(methods: frozenset[str]) -> frozenset[str]:
    """The methods a route answers: HEAD too where it takes GET."""
    return methods | {"HEAD"} if "GET" in methods else methods


def shadowed_routes(config: Config) -> list[str]:
    """One sentence per endpoint that, for some of its methods, can never be reached:
    an endpoint declared before it matches every path it matches, for those methods.

    A static path is looked up before every pattern, so only a static path shadows a
    static path; patterns are tried in the order they are declared.
    """
    found = []
    endpoints = config.endpoints
    for i, later in enumerate(endpoints):
        static = compile_pattern(later.path) is None
        left = frozenset(later.methods)
        for earlier in endpoints[:i]:
            if (compile_pattern(earlier.path) is None) != static:
                continue  # neither kind shadows the other (see above)
            if not _covers(earlier.path, later.path):
                continue
            lost = left & _taken(frozenset(earlier.methods))
            if not lost:
                continue
            left -= lost
            methods = ", ".join(sorted(lost))
            never = "can never match" if not left else f"can never match {methods}"
            found.append(
                f"endpoints.{later.path}: {never}: {earlier.path!r}, declared before it, "
                f"matches every path it matches ({methods})"
            )
            if not left:
                break
    return found


# -- what an endpoint is ---------------------------------------------------------


@attrs.frozen
class PluginEndpoint:
    """A plugin answers (`handler`), with the endpoint's own hooks around it."""

    pattern: str
    handler: str
    hooks: tuple[str, ...] = ()


@attrs.frozen
class StaticEndpoint:
    """A fixed answer; `{{now}}` (RFC 3339, UTC) and `{{request_id}}` are filled in.

    `fixed` is the whole answer, made once, when the body has neither placeholder.
    """

    pattern: str
    status: int
    body: str
    content_type: str = DEFAULT_CONTENT_TYPE
    headers: tuple[tuple[str, str], ...] = ()
    fixed: Response | None = attrs.field(
        init=False,
        eq=False,
        default=attrs.Factory(
            lambda self: (
                None
                if "{{" in self.body
                else Response(self.status, self.body.encode(), self.content_type, self.headers)
            ),
            takes_self=True,
        ),
    )


@attrs.frozen
class MountedEndpoint:
    """`/plugins/{plugin}/...`: any loaded plugin, without a line of YAML."""

    pattern: str


Endpoint = PluginEndpoint | StaticEndpoint | MountedEndpoint


def route_table(config: Config) -> RouteTable[Endpoint]:
    """The routes `config` asks for: its endpoints in order, then the auto-mounted ones."""
    return RouteTable(_config_routes(config))


def _config_routes(config: Config) -> Iterable[Route[Endpoint]]:
    for ep in config.endpoints:
        target: Endpoint
        if ep.response is not None:
            target = StaticEndpoint(
                ep.path,
                ep.response.status,
                ep.response.body,
                ep.response.content_type,
                tuple(ep.response.headers.items()),
            )
        else:
            assert ep.handler is not None
            target = PluginEndpoint(ep.path, ep.handler, ep.hooks)
        yield Route(ep.path, frozenset(ep.methods), target)
    if config.discovery.auto_mount:
        for pattern in AUTO_MOUNT_PATTERNS:
            yield Route(pattern, ALL_METHODS, MountedEndpoint(pattern))
