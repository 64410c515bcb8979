"""Host-local backend: one host's worker processes share their limits through the parent.

Imports msgspec, asyncio and `guard.coord` (the message types); no Redis. Used when `redis_url`
is empty and the server runs several worker processes: the parent runs a `HubServer` on a Unix
socket (e.g. `<data_dir>/guard.sock`), each worker's sync loop talks to it through a
`HubBackend`. Requests never wait for it: a worker sends one `SyncRequest` per sync interval.

`MemoryStore` is the backend's state and logic, the same operations as the Lua script in
`guard/shared.py` (leases on a GCRA, strike counters, block and hot-key feeds, live process
count), kept in step by the engine tests that run one scenario against both backends. Its clock
is the hub's own; workers only ever see durations relative to the reply's `now`.

Why a hub in the parent rather than a shared-memory table: the workers run the very engine
they run with Redis (one code path, one tolerance, one set of tests), no binary table format or
cross-process lock is needed (the hub's event loop serialises the syncs), and the parent already
outlives its workers. If the hub is gone, workers fall back to per-process limits exactly as
they do when Redis is down.

Framing: a 4-byte big-endian length, then a msgpack body (`SyncRequest` up, `SyncReply` down),
one request in flight per connection. A frame over `MAX_FRAME` closes the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import time
from bisect import bisect_right
from collections.abc import Callable

import msgspec

from panelsrv.guard.coord import LimitBatch, LimitReply, SyncReply, SyncRequest
from panelsrv.guard.sync import BackendUnavailable

MAX_FRAME = 64 * 1024 * 1024
FEED_BATCH = 1000  # feed entries returned per sync, per feed
HOT_FEED_LEN = 10_000


class MemoryStore:
    """The shared state of one host, in the hub process. Bounded by the leased keys."""

    __slots__ = ("_block_feed", "_blocked", "_buckets", "_hot_feed", "_procs", "_seq", "_strikes")

    def __init__(self) -> None:
        self._buckets: dict[tuple[str, str], list[float]] = {}  # (limit, key) -> [tat, hot until]
        self._strikes: dict[str, list[float]] = {}  # ip -> [count, window end]
        self._blocked: dict[str, float] = {}  # ip -> until
        self._block_feed: list[tuple[int, str, float]] = []  # (seq, ip, until), seq order
        self._hot_feed: list[tuple[int, float, str, str]] = []  # (seq, time, limit, key)
        self._procs: dict[str, float] = {}  # pid -> last sync
        self._seq = 0

    def sync(self, req: SyncRequest, now: float) -> SyncReply:
        self._procs[req.pid] = now
        self._procs = {pid: t for pid, t in self._procs.items() if t > now - req.live_ttl}
        limits = [self._lease(batch, now, req.hot_ttl) for batch in req.limits]
        for ip, count in zip(req.strike_ips, req.strike_counts, strict=True):
            self._strike(ip, count, now, req)
        self._expire(now)
        blocks, block_cursor = self._read_blocks(req.block_cursor)
        hot, hot_cursor = self._read_hot(req.hot_cursor, now - req.hot_ttl)
        return SyncReply(now, len(self._procs), limits, blocks, hot, block_cursor, hot_cursor)

    def _lease(self, batch: LimitBatch, now: float, hot_ttl: float) -> LimitReply:
        step, tau = batch.interval, batch.tau
        reply = LimitReply([], [])
        for key, charge, refund, want in zip(
            batch.keys, batch.charge, batch.refund, batch.want, strict=True
        ):
            record = self._buckets.get((batch.name, key))
            tat, hot = (record[0], record[1]) if record else (0.0, 0.0)
            tat = max(tat - refund * step, now) + charge * step
            grant = 0
            if want:
                grant = max(0, min(want, math.floor((now + tau - tat) / step + 1e-9)))
                tat += grant * step
            if hot < now and (charge or want):
                hot = now + hot_ttl
                self._seq += 1
                self._hot_feed.append((self._seq, now, batch.name, key))
            self._buckets[(batch.name, key)] = [tat, hot]
            reply.grants.append(grant)
            reply.debts.append(tat - now)
        return reply

    def _strike(self, ip: str, count: int, now: float, req: SyncRequest) -> None:
        record = self._strikes.get(ip)
        if record is None or record[1] <= now:
            record = self._strikes[ip] = [0.0, now + req.strike_window]
        record[0] += count
        if record[0] < req.strike_limit:
            return
        del self._strikes[ip]
        if self._blocked.get(ip, 0.0) <= now:
            until = self._blocked[ip] = now + req.block_seconds
            self._seq += 1
            self._block_feed.append((self._seq, ip, until))

    def _expire(self, now: float) -> None:
        feed = self._block_feed
        if feed and feed[0][2] <= now:
            del feed[: bisect_right(feed, now, key=lambda e: e[2])]
        if len(self._hot_feed) > 2 * HOT_FEED_LEN:
            del self._hot_feed[:-HOT_FEED_LEN]
        if len(self._buckets) > 1024:
            self._buckets = {k: r for k, r in self._buckets.items() if max(r) > now}
        if len(self._strikes) > 1024:
            self._strikes = {ip: r for ip, r in self._strikes.items() if r[1] > now}
        if len(self._blocked) > 1024:
            self._blocked = {ip: u for ip, u in self._blocked.items() if u > now}

    def _read_blocks(self, cursor: str) -> tuple[list[tuple[str, float]], str]:
        feed = self._block_feed
        start = bisect_right(feed, int(cursor or 0), key=lambda e: e[0])
        entries = feed[start : start + FEED_BATCH]
        last = str(entries[-1][0]) if entries else (cursor or "0")
        return [(ip, until) for _, ip, until in entries], last

    def _read_hot(self, cursor: str, since: float) -> tuple[list[tuple[str, str]], str]:
        feed = self._hot_feed
        if cursor:
            start = bisect_right(feed, int(cursor), key=lambda e: e[0])
        else:
            start = bisect_right(feed, since, key=lambda e: e[1])
        entries = feed[start : start + FEED_BATCH]
        last = str(entries[-1][0]) if entries else (cursor or str(self._seq))
        return [(name, key) for _, _, name, key in entries], last


_REQUEST = msgspec.msgpack.Decoder(SyncRequest)
_REPLY = msgspec.msgpack.Decoder(SyncReply)
_ENCODER = msgspec.msgpack.Encoder()


class HubServer:
    """Serves a `MemoryStore` on a Unix socket; run it in the parent of the workers."""

    __slots__ = ("_clock", "_path", "_server", "_writers", "store")

    def __init__(self, path: str, clock: Callable[[], float] = time.monotonic) -> None:
        self._path = path
        self._clock = clock
        self._server: asyncio.AbstractServer | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.store = MemoryStore()

    async def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._path)
        self._server = await asyncio.start_unix_server(self._serve, self._path)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for writer in list(self._writers):
                writer.close()
            await self._server.wait_closed()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while True:
                size = int.from_bytes(await reader.readexactly(4), "big")
                if size > MAX_FRAME:
                    break
                req = _REQUEST.decode(await reader.readexactly(size))
                body = _ENCODER.encode(self.store.sync(req, self._clock()))
                writer.write(len(body).to_bytes(4, "big") + body)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, msgspec.DecodeError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


class HubBackend:
    """A worker's connection to the hub; reconnects on the next sync after any failure."""

    __slots__ = ("_path", "_reader", "_writer")

    def __init__(self, path: str) -> None:
        self._path = path
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def sync(self, req: SyncRequest) -> SyncReply:
        try:
            if self._writer is None:
                self._reader, self._writer = await asyncio.open_unix_connection(self._path)
            assert self._reader is not None
            body = _ENCODER.encode(req)
            self._writer.write(len(body).to_bytes(4, "big") + body)
            await self._writer.drain()
            size = int.from_bytes(await self._reader.readexactly(4), "big")
            return _REPLY.decode(await self._reader.readexactly(size))
        except (OSError, asyncio.IncompleteReadError, msgspec.DecodeError) as exc:
            await self.close()
            raise BackendUnavailable(f"hub {self._path}: {exc!r}") from exc
        except BaseException:
            await self.close()  # cancelled mid-exchange: the stream is out of step
            raise

    async def close(self) -> None:
        writer, self._writer, self._reader = self._writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
