"""Test helpers: an echo handler, a server on port 0, raw-socket clients, a response reader,
a fake transport. Requests are built by tests/kit/wire.py, waits go through tests/kit/waiting.py.

The echo handler answers with what the protocol handed it, as JSON, and obeys a few query
switches: `hold=1` (answer once the test calls `calls.release()`), `gate=<dir>` (the same
across processes: leave `entered-<pid>` in dir, answer once `open` is there), `raise=1` (fail),
`big=<n>` (pad the answer to n bytes).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs

import httptools
import orjson

from panelsrv.http.listener import HttpServer, api_routes
from panelsrv.http.protocol import HttpProtocol
from panelsrv.http.request import Bounds, Request
from tests.kit.waiting import SHORT, until


def free_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Calls:
    """What the echo handler saw (tests assert the handler did or did not run), and the gate
    its `hold` requests wait at."""

    def __init__(self) -> None:
        self.count = 0
        self.active = 0
        self.gate = asyncio.Event()

    def release(self) -> None:
        """Let every held request (and any later one) answer."""
        self.gate.set()


async def echo(req: Request, calls: Calls | None = None) -> tuple[int, bytes, bytes]:
    if calls is not None:
        calls.count += 1
        calls.active += 1
    try:
        q = parse_qs(req.query.decode())
        if "hold" in q:
            assert calls is not None, "hold needs a Calls to be released through"
            await calls.gate.wait()
        if "gate" in q:
            gate = Path(q["gate"][0])
            (gate / f"entered-{os.getpid()}").touch()
            await until((gate / "open").exists, timeout=30.0)
        if "raise" in q:
            raise RuntimeError("secret-key-material-must-not-be-logged")
        body = {
            "id": req.id,
            "method": req.method.decode(),
            "pid": os.getpid(),
            "frozen": gc.get_freeze_count(),  # what the process froze once it had started
            "client_ip": req.client_ip,
            "host": req.host,
            "content_type": req.content_type.decode("latin-1"),
            "query": req.query.decode("latin-1"),
            "idempotency_key": req.idempotency_key,
            "body": req.body.decode("latin-1"),
        }
        data = orjson.dumps(body)
        if "big" in q:
            data = orjson.dumps({**body, "pad": "x" * int(q["big"][0])})
        req.action = "echo"
        return 200, data, b""
    finally:
        if calls is not None:
            calls.active -= 1


async def start_server(calls: Calls | None = None, **options: object) -> HttpServer:
    bounds = options.pop("bounds", Bounds())

    async def handler(req: Request) -> tuple[int, bytes, bytes]:
        return await echo(req, calls)

    server = HttpServer(api_routes(handler), bounds=bounds, **options)  # type: ignore[arg-type]
    await server.start("127.0.0.1", 0)
    return server


@dataclass
class Response:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    def json(self) -> dict:  # type: ignore[type-arg]
        return orjson.loads(self.body)  # type: ignore[no-any-return]


class ResponseReader:
    """Parses the responses a server sends on one connection (100 Continue included)."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self._reader = reader
        self._parser = httptools.HttpResponseParser(self)
        self._ready: list[Response] = []
        self._current: Response | None = None
        self.eof = False

    def on_message_begin(self) -> None:
        self._current = Response(0)

    def on_header(self, name: bytes, value: bytes) -> None:
        assert self._current is not None
        self._current.headers[name.decode().lower()] = value.decode()

    def on_headers_complete(self) -> None:
        assert self._current is not None
        self._current.status = self._parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        assert self._current is not None
        self._current.body += body

    def on_message_complete(self) -> None:
        assert self._current is not None
        self._ready.append(self._current)
        self._current = None

    async def next(self, timeout: float = SHORT) -> Response | None:
        """The next response, or None at EOF."""
        while not self._ready:
            if self.eof:
                return None
            data = await asyncio.wait_for(self._reader.read(65536), timeout)
            if not data:
                self.eof = True
                continue
            self._parser.feed_data(data)
        return self._ready.pop(0)

    async def closed(self, timeout: float = SHORT) -> bool:
        """True when the server closes (EOF) with nothing more to say; False if it says more."""
        if self._ready:
            return False
        try:
            while not self.eof:
                data = await asyncio.wait_for(self._reader.read(65536), timeout)
                if not data:
                    self.eof = True
                else:
                    self._parser.feed_data(data)
                    return False
        except ConnectionError:  # reset, or our own write hit the closed socket
            self.eof = True
        return True


class Client:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.responses = ResponseReader(reader)

    @classmethod
    async def connect(cls, port: int) -> Client:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def send_split(self, data: bytes, at: int) -> None:
        """Two writes with loop turns between, so the server reads them separately."""
        await self.send(data[:at])
        for _ in range(3):
            await asyncio.sleep(0)
        await self.send(data[at:])

    async def next(self, timeout: float = SHORT) -> Response | None:
        return await self.responses.next(timeout)

    async def final(self, timeout: float = SHORT) -> Response | None:
        """The next response that is not an interim 1xx."""
        while True:
            response = await self.responses.next(timeout)
            if response is None or response.status >= 200:
                return response

    async def closed(self, timeout: float = SHORT) -> bool:
        return await self.responses.closed(timeout)

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


class FakeTransport:
    """A transport without a socket: records what the protocol writes and how it ends;
    closing or aborting delivers `connection_lost` at once, and only once, as a loop would."""

    def __init__(self, peer: str = "127.0.0.1") -> None:
        self.peer = peer
        self.protocol: HttpProtocol | None = None
        self.writes: list[bytes] = []
        self.closed = False
        self.aborted = False
        self.eof_written = False
        self.reading = True

    def get_extra_info(self, name: str, default: object = None) -> object:
        return (self.peer, 40000) if name == "peername" else default

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))

    def writelines(self, parts: tuple[bytes, ...]) -> None:
        self.writes.append(b"".join(parts))

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof_written = True

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.lose()

    def abort(self) -> None:
        self.aborted = True
        self.lose()

    def lose(self) -> None:
        """The connection ends (the peer went away, or we closed it)."""
        if not self.closed:
            self.closed = True
            if self.protocol is not None:
                self.protocol.connection_lost(None)

    def statuses(self) -> list[int]:
        """The status of each response written, interim ones included (the protocol writes
        each response with one call)."""
        return [int(data[9:12]) for data in self.writes]


def connect(server: HttpServer, peer: str = "127.0.0.1") -> tuple[HttpProtocol, FakeTransport]:
    """A connection to `server` over a FakeTransport from `peer`; the server need not listen
    (its loop becomes the running one)."""
    server.loop = asyncio.get_running_loop()
    protocol = server()
    transport = FakeTransport(peer)
    protocol.connection_made(transport)  # type: ignore[arg-type]
    if protocol._transport is not None:  # admitted
        transport.protocol = protocol
    return protocol, transport
