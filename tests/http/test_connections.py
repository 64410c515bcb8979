"""Per-connection bookkeeping through a fake transport: which request a deferred 100 Continue
belongs to."""

from __future__ import annotations

import asyncio

from panelsrv.http.listener import HttpServer, api_routes
from panelsrv.http.request import Answer, Request
from tests.http.httpkit import connect, post

OK: Answer = (200, b"{}", b"")


class Gate:
    """A handler that answers at once, except `?hold` requests, which wait for `release()`."""

    def __init__(self) -> None:
        self.held: list[asyncio.Future[Answer]] = []

    def __call__(self, req: Request) -> Answer | asyncio.Future[Answer]:
        if b"hold" not in req.query:
            return OK
        held = asyncio.get_running_loop().create_future()
        self.held.append(held)
        return held

    async def release(self, fail: bool = False) -> None:
        held = self.held.pop(0)
        if fail:
            held.set_exception(RuntimeError("handler failed"))
        else:
            held.set_result(OK)
        for _ in range(5):  # let the connection's task finish and write
            await asyncio.sleep(0)


def gated(**options: object) -> tuple[HttpServer, Gate]:
    gate = Gate()
    return HttpServer(api_routes(gate), **options), gate  # type: ignore[arg-type]


HOLD = post(target=b"/api/v2?hold")


H_EXPECT = b"POST /api/v2 HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n"
HTTP10 = b"POST /api/v2 HTTP/1.0\r\nConnection: keep-alive\r\nContent-Length: 3\r\n\r\n"


async def test_a_deferred_100_continue_belongs_to_the_request_that_asked() -> None:
    server, gate = gated()
    proto, transport = connect(server)
    # B asks for a 100 while A is in flight, then sends its body anyway: no 100 is owed
    proto.data_received(HOLD + H_EXPECT + b"abc")
    await gate.release()
    assert transport.statuses() == [200, 200]
    # D (HTTP/1.0: never a 100) waits in its body phase behind C: B's 100 must not reach it
    proto.data_received(HOLD + HTTP10)
    await gate.release()
    assert transport.statuses() == [200, 200, 200]
    proto.data_received(b"xyz")
    assert transport.statuses() == [200] * 4
    # F asks while E is in flight and waits for it: F gets its 100 once E is answered
    proto.data_received(HOLD + H_EXPECT)
    await gate.release()
    assert transport.statuses() == [200] * 5 + [100]
    proto.data_received(b"abc")
    assert transport.statuses() == [200] * 5 + [100, 200]
    transport.lose()
