"""The connection's rules on a fake transport and a fake clock: its state table, the absolute
head and body deadlines, keep-alive, pipelining depth, refusals after what is owed, the client
that stops reading, half-close and linger, and stop. No socket, no wall time: the clock moves
only when a test advances it, so every deadline is checked to the edge."""

from __future__ import annotations

import gc
import re

import pytest
from httptools import HttpRequestParser

from panelsrv.http import protocol
from panelsrv.http.protocol import (
    BLOCKED,
    BUSY,
    BUSY_BLOCKED,
    GONE,
    LINGER,
    LINGER_BLOCKED,
    LINGER_SECONDS,
    READY,
    TRANSITIONS,
    HttpProtocol,
)
from panelsrv.http.reader import Reader
from panelsrv.http.request import Bounds
from tests.http.httpkit import connect
from tests.http.sansio import HOLD, Gate, served
from tests.kit.wire import post

H = b"POST /api/v2 HTTP/1.1\r\nHost: a\r\n"
EPS = 2**-10  # times below are binary fractions: the fake clock adds them exactly


def rejects(server: object, reason: str) -> float:
    return server.metrics.rejects.values.get((reason,), 0)  # type: ignore[attr-defined, no-any-return]


def test_the_docstring_table_is_the_transition_table() -> None:
    doc = protocol.__doc__ or ""
    rows = re.findall(r"^    ([A-Z_]+|any)\s+(\w+)\s+([A-Z_]+)", doc, re.M)
    states = {name: getattr(protocol, name) for name in {r[0] for r in rows} - {"any"}}
    table: dict[str, dict[str, str]] = {}
    for state, event, to in rows:
        for name in [state] if state != "any" else sorted(set(states) - {"NEW", "GONE"}):
            table.setdefault(event, {})[getattr(protocol, name)] = getattr(protocol, to)
    assert table == TRANSITIONS


async def test_a_request_answered_from_memory_leaves_it_ready_one_that_awaits_is_busy() -> None:
    gate = Gate()
    _, proto, transport, _ = served(gate)
    proto.data_received(post())
    assert proto.state == READY and transport.statuses() == [200] and transport.reading
    proto.data_received(HOLD)
    assert proto.state == BUSY and not transport.reading
    await gate.release()
    assert proto.state == READY and transport.statuses() == [200, 200] and transport.reading


async def test_the_head_deadline_is_absolute_however_slowly_it_trickles() -> None:
    server, proto, transport, clock = served(bounds=Bounds(header_timeout=0.5))
    proto.data_received(b"POST /api/v2 HTTP/1.1\r\n")
    for _ in range(7):  # a byte every 1/16 s would reset an inactivity timer forever
        clock.advance(0.0625)
        proto.data_received(b"X")
    clock.advance(0.0625 - EPS)
    assert not transport.closed
    clock.advance(EPS)
    assert transport.closed and transport.writes == [] and rejects(server, "header_timeout") == 1


async def test_the_body_deadline_is_absolute_from_the_end_of_the_head() -> None:
    server, proto, transport, clock = served(bounds=Bounds(body_timeout=0.5, header_timeout=5))
    clock.advance(1.0)
    proto.data_received(H + b"Content-Length: 100\r\n\r\n")
    for _ in range(7):
        clock.advance(0.0625)
        proto.data_received(b"x")
    clock.advance(0.0625 - EPS)
    assert not transport.closed
    clock.advance(EPS)
    assert transport.closed and rejects(server, "body_timeout") == 1


async def test_an_idle_keep_alive_connection_closes_at_its_timeout_a_new_head_has_its_own() -> None:
    server, proto, transport, clock = served(
        bounds=Bounds(keepalive_timeout=0.25, header_timeout=5.0)
    )
    proto.data_received(post())
    clock.advance(0.25 - EPS)
    proto.data_received(b"POST")  # a head began: the header deadline holds now
    clock.advance(4.5)
    assert not transport.closed
    proto.data_received(post()[4:])
    assert transport.statuses() == [200, 200]
    clock.advance(0.25 - EPS)
    assert not transport.closed
    clock.advance(EPS)
    assert transport.closed and transport.statuses() == [200, 200]
    assert rejects(server, "header_timeout") == 0  # idle between requests is no refusal


async def test_a_connection_that_never_sends_closes_at_the_header_timeout() -> None:
    _, _, transport, clock = served(bounds=Bounds(header_timeout=0.25))
    clock.advance(0.25 - EPS)
    assert not transport.closed
    clock.advance(EPS)
    assert transport.closed


async def test_a_handler_has_no_deadline_and_the_client_gets_a_fresh_one_after() -> None:
    gate = Gate()
    _, proto, transport, clock = served(gate, bounds=Bounds(keepalive_timeout=1.0))
    proto.data_received(HOLD)
    clock.advance(3600)  # the handler may be moving money: its time is not the client's
    assert not transport.closed
    await gate.release()
    clock.advance(1.0 - EPS)
    assert not transport.closed
    clock.advance(EPS)
    assert transport.closed


async def test_keep_alive_requests_do_not_schedule_a_timer_each() -> None:
    _, proto, transport, clock = served()
    calls = 0
    call_at = clock.call_at

    def counting(when: float, callback: object) -> object:
        nonlocal calls
        calls += 1
        return call_at(when, callback)  # type: ignore[arg-type]

    clock.call_at = counting  # type: ignore[method-assign, assignment]
    for _ in range(200):
        proto.data_received(post(b"a=1"))
    assert transport.statuses() == [200] * 200
    assert calls <= 2  # only re-armed when a deadline moved earlier than the timer


async def test_pipelining_beyond_the_depth_answers_what_was_queued_then_closes() -> None:
    gate = Gate()
    server, proto, transport, _ = served(gate, bounds=Bounds(max_pipelined=4))
    proto.data_received(HOLD * 11)
    assert proto.state == BUSY and rejects(server, "pipelined") == 1
    for answered in range(1, 6):  # the one in flight and the four queued behind it
        await gate.release()
        assert transport.statuses() == [200] * answered
    assert proto.state == LINGER and transport.eof_written and not gate.held


async def test_a_refusal_waits_for_the_answers_owed_and_its_deadlines_do_not_cut_them() -> None:
    checks: list[str] = []

    def precheck(ip: str) -> int:  # the second request is refused, as a blocked address
        checks.append(ip)
        return -1 if len(checks) == 2 else 0

    gate = Gate()
    _, proto, transport, clock = served(gate, precheck=precheck, bounds=Bounds(body_timeout=0.1))
    proto.data_received(HOLD + H + b"Content-Length: 50\r\n\r\n")
    clock.advance(10)
    assert transport.writes == [] and not transport.closed
    await gate.release()
    assert transport.statuses() == [200, 429] and proto.state == LINGER
    assert b"Connection: close" not in transport.writes[0]  # the owed answer is as it was
    assert b"Connection: close" in transport.writes[1]


async def test_a_client_that_stops_reading_pauses_us_and_is_cut_at_the_write_timeout() -> None:
    server, proto, transport, clock = served(bounds=Bounds(write_timeout=0.5))
    proto.pause_writing()
    assert proto.state == BLOCKED and not transport.reading
    proto.data_received(post() * 2)  # already buffered: queued, not answered
    assert transport.writes == []
    clock.advance(0.4)
    proto.resume_writing()
    assert proto.state == READY and transport.statuses() == [200, 200] and transport.reading
    proto.pause_writing()
    clock.advance(0.5 - EPS)
    assert not transport.closed
    clock.advance(EPS)
    assert transport.aborted and rejects(server, "write_timeout") == 1


async def test_a_pause_during_a_handler_holds_its_queue_until_resumed() -> None:
    gate = Gate()
    _, proto, transport, _ = served(gate)
    proto.data_received(HOLD + post())
    proto.pause_writing()
    assert proto.state == BUSY_BLOCKED
    await gate.release()
    assert proto.state == BLOCKED and transport.statuses() == [200]
    proto.resume_writing()
    assert proto.state == READY and transport.statuses() == [200, 200]


async def test_close_after_a_response_half_closes_then_drains_for_a_while() -> None:
    _, proto, transport, clock = served()
    proto.data_received(post(b"", b"Connection: close\r\n") + post(b"smuggled=1"))
    assert transport.statuses() == [200] and b"Connection: close" in transport.writes[0]
    assert proto.state == LINGER and transport.eof_written and transport.reading
    proto.data_received(post())  # the client's leftovers: drained, never parsed
    assert transport.statuses() == [200]
    proto.pause_writing()
    assert proto.state == LINGER_BLOCKED
    proto.resume_writing()
    clock.advance(LINGER_SECONDS - EPS)
    assert not transport.closed
    clock.advance(EPS)
    assert transport.aborted and proto.state == GONE


async def test_a_client_half_close_while_busy_is_answered_then_closed() -> None:
    gate = Gate()
    _, proto, transport, _ = served(gate)
    proto.data_received(HOLD)
    assert proto.eof_received() is True  # keep the transport open: an answer is owed
    await gate.release()
    assert transport.statuses() == [200] and b"Connection: close" in transport.writes[0]
    assert transport.closed and not transport.eof_written  # nothing left to drain


async def test_a_client_half_close_when_nothing_is_owed_closes() -> None:
    _, proto, _, _ = served()
    proto.data_received(post())
    assert proto.eof_received() is False


async def test_shutdown_closes_an_idle_connection_and_lets_a_busy_one_finish() -> None:
    _, idle, idle_transport, _ = served()
    idle.shutdown()
    assert idle_transport.closed

    gate = Gate()
    _, busy, transport, _ = served(gate)
    busy.data_received(HOLD)
    busy.shutdown()
    assert not transport.closed and not busy.lingering
    await gate.release()
    assert b"Connection: close" in transport.writes[0] and busy.lingering


async def test_the_client_leaving_while_a_handler_runs_drops_its_answer_and_releases_once() -> None:
    gate = Gate()
    server, proto, transport, _ = served(gate)
    proto.data_received(HOLD)
    transport.lose()
    assert proto.state == GONE and proto in server.conns  # the handler still runs
    await gate.release()
    assert transport.writes == [] and not server.conns


@pytest.mark.parametrize("deferred", [False, True])
async def test_expect_100_continue_is_sent_when_the_connection_gets_to_the_request(
    deferred: bool,
) -> None:
    gate = Gate()
    _, proto, transport, _ = served(gate)
    head = H + b"Expect: 100-continue\r\nContent-Length: 3\r\n\r\n"
    proto.data_received((HOLD if deferred else b"") + head)
    if deferred:
        assert transport.writes == []  # not the 100 while the request ahead is unanswered
        await gate.release()
    assert transport.statuses() == [200, 100] if deferred else [100]
    proto.data_received(b"abc")
    assert transport.statuses()[-1] == 200


def live(kind: type) -> int:
    return sum(1 for o in gc.get_objects() if type(o) is kind)


async def test_an_ended_connection_is_freed_by_reference_count_not_the_cycle_collector() -> None:
    """However a connection ends, nothing of it waits for the cycle collector: its full
    collections walk every such leftover, and under connection churn they stalled every open
    connection (50 ms at 500 slow connections dropped a second, bench/slowloris.py)."""
    gate = Gate()
    server, proto, transport, clock = served(gate, bounds=Bounds(max_pipelined=1))
    transport.lose()
    del proto, transport
    endings = [
        (H, 11.0),  # the head's deadline
        (H + b"Content-Length: 9\r\n\r\n", 31.0),  # the body's
        (b"BREW / HTTP/1.1\r\n\r\n", 0.0),  # a refusal
        (HOLD + post() * 3, 0.0),  # pipelined past the depth
        (post(), 0.0),  # answered, then the peer goes
        (HOLD, 0.0),  # the peer goes while its handler runs
    ]
    gc.collect()
    gc.disable()
    try:
        before = live(HttpProtocol), live(Reader), live(HttpRequestParser)
        for data, wait in endings:
            conn, wire = connect(server)
            conn.data_received(data)
            clock.advance(wait)
            wire.lose()
            while gate.held:
                await gate.release()
            del conn, wire
        assert (live(HttpProtocol), live(Reader), live(HttpRequestParser)) == before
        assert not server.conns
    finally:
        gc.enable()
