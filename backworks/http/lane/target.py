"""A request target, as routes match it: origin-form, absolute-form or `*`.

Read as aiohttp (yarl) reads it, so both engines route the same path; a target that
does not parse is a BadTarget, which the lane answers 400.
"""

from __future__ import annotations

import yarl


class BadTarget(ValueError):
    """A request target the lane will not route (absolute-form that does not parse)."""


def split_target(url: bytes) -> tuple[str, str]:
    """The path (percent-decoded) and the raw query of a request target."""
    if url[:1] == b"/":
        raw_path, _, query = url.partition(b"?")
        if b"%" not in raw_path:  # the common target: nothing to decode
            return raw_path.decode("utf-8", "surrogateescape"), query.decode(
                "utf-8", "surrogateescape"
            )
    elif url == b"*":
        raw_path, query = url, b""
    else:  # absolute-form (`GET http://host/path`), as a proxy would send it
        raw_path, query = _absolute(url)
    return _path(raw_path), query.decode("utf-8", "surrogateescape")


def _absolute(url: bytes) -> tuple[bytes, bytes]:
    try:
        parsed = yarl.URL(url.decode("utf-8", "surrogateescape"))
        port = parsed.port
    except (ValueError, UnicodeError) as e:
        msg = "an absolute-form target that does not parse"
        raise BadTarget(msg) from e
    if not parsed.absolute or parsed.scheme not in ("http", "https") or port is None:
        msg = "an absolute-form target with no http(s) origin"
        raise BadTarget(msg)
    return (parsed.raw_path or "/").encode(), parsed.raw_query_string.encode()


def _path(raw: bytes) -> str:
    """The path as routes match it: percent-decoded exactly as aiohttp (yarl) does."""
    if b"%" not in raw:
        return raw.decode("utf-8", "surrogateescape")
    return yarl.URL.build(path=raw.decode("utf-8", "surrogateescape"), encoded=True).path
