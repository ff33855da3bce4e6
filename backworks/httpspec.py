"""What HTTP/1.1 allows on the wire, said once for every place text meets it.

Plugin answers (abi/marshal.py), config values (config/parse.py) and both HTTP
engines (http/) check names, values and statuses here, byte-exactly as RFC 9110 and
RFC 9112 define them, so a value one layer accepts can never break the wire another
layer writes.
"""

from __future__ import annotations

import re
from http import HTTPStatus

# RFC 9110 5.1 `token`: the characters of a header name (and of a method).
TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# RFC 9110 5.5 `field-value`: visible ASCII, obs-text, and single spaces or tabs
# between them; no leading or trailing whitespace, and never CR, LF, NUL or other
# controls (those would split a header or end the head of the answer early).
FIELD_VALUE = re.compile(rb"(?:[\x21-\x7e\x80-\xff](?:[ \t]*[\x21-\x7e\x80-\xff])*)?")
# A media type as Content-Type carries it: `type/subtype` and optional parameters.
MEDIA_TYPE = re.compile(
    rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+/[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
    rb"(?:[ \t]*;[ \t]*[!#$%&'*+\-.^_`|~0-9A-Za-z]+="
    rb"(?:[!#$%&'*+\-.^_`|~0-9A-Za-z]+|\"(?:[\t \x21\x23-\x5b\x5d-\x7e\x80-\xff]"
    # a quoted-pair (RFC 9110 5.6.4): a backslash, then HTAB, SP, VCHAR or obs-text
    rb"|\\[\t \x21-\x7e\x80-\xff])*\"))*"
)

# The statuses a final answer may have. 1xx are interim (a client would wait for the
# real answer forever); anything else is not an HTTP status.
FINAL_STATUSES = range(200, 600)
# Answers that never carry a body (RFC 9110 6.4.1); the host drops a plugin's body.
EMPTY_BODY_STATUSES = frozenset({204, 304})

# Headers the host computes from the body and the connection: a plugin's are ignored.
HOST_HEADERS = frozenset(
    {"content-length", "content-type", "transfer-encoding", "connection", "keep-alive"}
)


def is_token(name: bytes) -> bool:
    """Whether `name` may be a header name."""
    return TOKEN.fullmatch(name) is not None


def is_field_value(value: bytes) -> bool:
    """Whether `value` may be a header value as it stands (no trimming, no controls)."""
    return FIELD_VALUE.fullmatch(value) is not None


def is_media_type(value: bytes) -> bool:
    """Whether `value` is a Content-Type: `type/subtype` with optional parameters."""
    return MEDIA_TYPE.fullmatch(value) is not None


def reason(status: int) -> str:
    """The reason phrase of `status` (`Not Found`), or `Unknown` for an unnamed one."""
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"
