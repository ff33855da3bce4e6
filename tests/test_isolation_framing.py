"""The host <-> worker framing: every message survives the trip, in any chunking."""

from __future__ import annotations

import struct

import pytest

from backworks.abi import PluginInfo, Request, Response
from backworks.isolation import framing as fr

REQUEST = Request(
    method="POST",
    path="/caf\udcff/x",  # a byte that is not UTF-8 comes back unchanged
    query="a=1&b=%20",
    endpoint="/caf/{rest}",
    params=(("rest", "x"),),
    headers=(("content-type", "application/json"), ("x-empty", "")),
    body=b"\x00\xff" * 1000,
    request_id="req-1",
    timeout_ms=2500,
)
RESPONSE = Response(
    status=418, body=b"teapot", content_type="text/plain", headers=(("x-a", "1"), ("x-b", "2"))
)


def one(data: bytes) -> tuple[int, int, bytes]:
    frames = fr.FrameReader().feed(data)
    assert len(frames) == 1
    return frames[0]


def test_a_request_and_its_upstream_survive_the_trip() -> None:
    kind, call_id, body = one(fr.encode_call(fr.ON_RESPONSE, 7, REQUEST, RESPONSE))
    assert (kind, call_id) == (fr.ON_RESPONSE, 7)
    assert fr.decode_request_and_upstream(body) == (REQUEST, RESPONSE)
    kind, _, body = one(fr.encode_call(fr.HANDLE, 8, Request("GET", "/")))
    assert fr.decode_request(body) == Request("GET", "/")


def test_a_call_sent_again_keeps_its_request_under_a_new_id() -> None:
    kind, call_id, body = one(fr.with_call_id(fr.encode_call(fr.HANDLE, 7, REQUEST), 0xFFFFFFFF))
    assert (kind, call_id) == (fr.HANDLE, 0xFFFFFFFF)
    assert fr.decode_request(body) == REQUEST


def test_responses_failures_logs_and_cpu_reports_survive_the_trip() -> None:
    assert fr.decode_response(one(fr.encode_response(3, RESPONSE))[2]) == RESPONSE
    negative = Response(status=-1)
    assert fr.decode_response(one(fr.encode_response(3, negative))[2]) == negative
    kind, call_id, body = one(fr.encode_failure(9, fr.ERR_CANCELLED, "handle cancelled"))
    assert (kind, call_id, fr.decode_failure(body)) == (
        fr.FAILED,
        9,
        (fr.ERR_CANCELLED, "handle cancelled"),
    )
    assert fr.decode_log(one(fr.encode_log(30, "é warn"))[2]) == (30, "é warn")
    assert fr.decode_cpu_exceeded(one(fr.encode_cpu_exceeded(4, 123))[2]) == 123


def test_init_ready_and_start_failures_survive_the_trip() -> None:
    init = fr.WorkerInit(
        path="/p/libx.so",
        name="x",
        config_json=b'{"a": 1}',
        allow_insecure_permissions=True,
        sha256="ab" * 32,
        threads=4,
        memory_limit_mb=64,
        cpu_limit_ms=250,
        probe=True,
    )
    assert fr.decode_init(one(fr.encode_init(init))[2]) == init
    info = PluginInfo(
        path="/p/libx.so",
        name="x",
        version="1.2.3",
        description="d",
        abi_version=0x10000,
        flags=3,
        has_health=True,
        has_on_response=True,
    )
    ready = fr.Ready(info=info, pid=1234, baseline_rss_kb=20_000)
    assert fr.decode_ready(one(fr.encode_ready(ready))[2]) == ready
    failed = fr.encode_start_failed(fr.ERR_INIT, "/p/libx.so", "no database")
    assert fr.decode_start_failed(one(failed)[2]) == (fr.ERR_INIT, "/p/libx.so", "no database")


def test_the_reader_reassembles_frames_split_anywhere() -> None:
    stream = b"".join(
        [
            fr.encode_call(fr.HANDLE, 1, REQUEST),
            fr.frame(fr.HEALTH, 2),
            fr.encode_response(3, RESPONSE),
        ]
    )
    for chunk in (1, 7, 64, len(stream)):
        reader = fr.FrameReader()
        frames = []
        for i in range(0, len(stream), chunk):
            frames += reader.feed(stream[i : i + chunk])
        assert [(k, c) for k, c, _ in frames] == [(fr.HANDLE, 1), (fr.HEALTH, 2), (fr.RESPONSE, 3)]
        assert fr.decode_request(frames[0][2]) == REQUEST
        assert reader.pending == 0


def test_garbage_is_a_protocol_error_not_a_huge_allocation() -> None:
    with pytest.raises(fr.ProtocolError, match="claims"):
        fr.FrameReader().feed(fr.HEADER.pack(fr.MAX_BODY + 1, fr.RESPONSE, 1))
    # A string field longer than its frame.
    body = struct.pack("<i", 200) + struct.pack("<I", 1000) + b"short"
    with pytest.raises(fr.ProtocolError, match="runs past the end"):
        fr.decode_response(body)
    with pytest.raises(fr.ProtocolError, match="malformed"):
        fr.decode_response(b"\x01")
    with pytest.raises(fr.ProtocolError, match="left over"):
        fr.decode_cpu_exceeded(struct.pack("<II", 1, 2))
