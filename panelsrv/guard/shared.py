"""Redis backend: the guard's limits and IP blocks shared by every process on every host.

Imports `redis.asyncio` (the `redis` package) and `guard.coord`/`guard.sync`. Off the request
path: only the sync task (`guard/sync.py`) calls `RedisBackend.sync`, once per interval, as one
pipeline of EVALSHA calls (one call unless a sync carries more than `CHUNK` keys or strikes).

The Lua script applies a `SyncRequest` on Redis's own clock (`TIME`), never a host's:
- leases: per key a hash `{p}:l:<limit>:<key>` with `t` (GCRA theoretical arrival time, µs) and
  `h` (hot-notice expiry, µs); refund unspent tokens, charge unleased admissions, grant
  min(want, available) tokens; expires once the bucket is full and the notice lapsed;
- hot notices: the first lease activity on a key (again each `hot_ttl`) is appended to the
  stream `{p}:hot` (capped ~10,000 entries);
- strikes: `{p}:s:<ip>` INCRBY with an expiry of the strike window from its first strike; at the
  limit it is deleted and `{p}:b:<ip>` is SET NX with the block TTL; a new block is appended to
  the stream `{p}:blocks` (entries older than the block time trimmed);
- live processes: zset `{p}:procs` pid -> last sync, trimmed after `live_ttl`; its size is P;
- both streams are read from the caller's cursors (at most `FEED_BATCH` entries each).
Every key carries the hash tag `{prefix}`, and every key is passed in KEYS, so the script is
valid on a cluster too. The state mirrors `MemoryStore` in `guard/hub.py`.

The tolerance this gives (admissions beyond rate*W + burst) is stated in `guard/coord.py`.
Needs Redis >= 6.2 (XADD MINID, exclusive XRANGE starts).

Errors: any Redis or socket error becomes `BackendUnavailable`; a flushed script cache
(NOSCRIPT) is reloaded once.
"""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, RedisError

from panelsrv.guard.coord import LimitReply, SyncReply, SyncRequest
from panelsrv.guard.sync import BackendUnavailable

CHUNK = 500  # keys (and strikes) per script call: a long script would stall other clients
FEED_BATCH = 1000
HOT_FEED_LEN = 10_000

SYNC_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local feeds = ARGV[3] == '1'
local hot_ttl = tonumber(ARGV[6])
local groups = tonumber(ARGV[11])
local a, k = 12, 3
local flat = {}
for g = 1, groups do
  local name, step = ARGV[a+1], tonumber(ARGV[a+2])
  local tau, count = tonumber(ARGV[a+3]), tonumber(ARGV[a+4])
  a = a + 4
  for i = 1, count do
    local key = ARGV[a+1]
    local charge, refund, want = tonumber(ARGV[a+2]), tonumber(ARGV[a+3]), tonumber(ARGV[a+4])
    a = a + 4
    k = k + 1
    local s = redis.call('HMGET', KEYS[k], 't', 'h')
    local tat = (tonumber(s[1]) or 0) - refund * step
    if tat < now then tat = now end
    tat = tat + charge * step
    local grant = 0
    if want > 0 then
      grant = math.floor((now + tau - tat) / step + 1e-9)
      if grant > want then grant = want end
      if grant < 0 then grant = 0 end
      tat = tat + grant * step
    end
    local hot = tonumber(s[2]) or 0
    if hot < now and (charge > 0 or want > 0) then
      hot = now + hot_ttl
      redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[12], '*', 'n', name, 'k', key)
    end
    redis.call('HSET', KEYS[k], 't', string.format('%.0f', tat), 'h', string.format('%.0f', hot))
    redis.call('PEXPIRE', KEYS[k], math.floor((math.max(tat, hot) - now) / 1000) + 1)
    flat[#flat+1] = grant
    flat[#flat+1] = math.floor(tat - now)
  end
end
local strikes = tonumber(ARGV[a+1])
a = a + 1
local limit, window_ms, block_us = tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9])
for j = 1, strikes do
  local ip, count = ARGV[a+1], tonumber(ARGV[a+2])
  a = a + 2
  local sk, bk = KEYS[k+j], KEYS[k+strikes+j]
  local total = redis.call('INCRBY', sk, count)
  if total == count then redis.call('PEXPIRE', sk, window_ms) end
  if total >= limit then
    redis.call('DEL', sk)
    if redis.call('SET', bk, '1', 'PX', math.floor(block_us / 1000), 'NX') then
      local minid = string.format('%.0f', math.floor((now - block_us) / 1000))
      redis.call('XADD', KEYS[2], 'MINID', '~', minid, '*', 'ip', ip,
                 'u', string.format('%.0f', now + block_us))
    end
  end
end
if not feeds then return {now, 0, flat, {}, {}} end
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))
redis.call('PEXPIRE', KEYS[1], math.floor(tonumber(ARGV[2]) / 1000) + 1)
local procs = redis.call('ZCARD', KEYS[1])
local bstart = '-'
if ARGV[4] ~= '' then bstart = '(' .. ARGV[4] end
local hstart = string.format('%.0f', math.floor((now - hot_ttl) / 1000))
if ARGV[5] ~= '' then hstart = '(' .. ARGV[5] end
local blocks = redis.call('XRANGE', KEYS[2], bstart, '+', 'COUNT', ARGV[10])
local hots = redis.call('XRANGE', KEYS[3], hstart, '+', 'COUNT', ARGV[10])
return {now, procs, flat, blocks, hots}
"""


def _us(seconds: float) -> str:
    return repr(seconds * 1e6)


class RedisBackend:
    """Sync requests applied by one Lua script; `prefix` namespaces every key."""

    __slots__ = ("_redis", "_sha", "prefix")

    def __init__(self, url: str, prefix: str = "panelsrv", timeout: float = 0.5) -> None:
        self.prefix = "{" + prefix + "}"
        self._redis = aioredis.Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),  # the sync loop retries, with backoff
            max_connections=2,
        )
        self._sha = ""

    async def close(self) -> None:
        await self._redis.aclose()

    async def sync(self, req: SyncRequest) -> SyncReply:
        calls = self._calls(req)
        try:
            try:
                results = await self._run(calls)
            except NoScriptError:
                self._sha = ""
                results = await self._run(calls)
        except (RedisError, OSError) as exc:
            raise BackendUnavailable(f"redis: {exc!r}") from exc
        return self._reply(req, results)

    async def _run(self, calls: list[tuple[list[str], list[str]]]) -> list[Any]:
        if not self._sha:
            self._sha = await self._redis.script_load(SYNC_SCRIPT)
        async with self._redis.pipeline(transaction=False) as pipe:
            for keys, args in calls:
                pipe.evalsha(self._sha, len(keys), *keys, *args)
            return await pipe.execute()

    def _calls(self, req: SyncRequest) -> list[tuple[list[str], list[str]]]:
        """Split the request into script calls of at most CHUNK keys; call 0 reads the feeds."""
        p = self.prefix
        entries = [(batch, i) for batch in req.limits for i in range(len(batch.keys))]
        strikes = list(zip(req.strike_ips, req.strike_counts, strict=True))
        calls = []
        start = 0
        while start == 0 or start < max(len(entries), len(strikes)):
            part, hits = entries[start : start + CHUNK], strikes[start : start + CHUNK]
            keys = [f"{p}:procs", f"{p}:blocks", f"{p}:hot"]
            args = [
                req.pid,
                _us(req.live_ttl),
                "1" if start == 0 else "0",
                req.block_cursor,
                req.hot_cursor,
                _us(req.hot_ttl),
                str(req.strike_limit),
                str(int(req.strike_window * 1000)),
                _us(req.block_seconds),
                str(FEED_BATCH),
                "",  # group count, filled below
                str(HOT_FEED_LEN),
            ]
            groups = 0
            for batch in req.limits:
                mine = [i for b, i in part if b is batch]
                if not mine:
                    continue
                groups += 1
                args += [batch.name, _us(batch.interval), _us(batch.tau), str(len(mine))]
                for i in mine:
                    key = batch.keys[i]
                    keys.append(f"{p}:l:{batch.name}:{key}")
                    args += [key, str(batch.charge[i]), str(batch.refund[i]), str(batch.want[i])]
            args[10] = str(groups)
            args.append(str(len(hits)))
            keys += [f"{p}:s:{ip}" for ip, _ in hits] + [f"{p}:b:{ip}" for ip, _ in hits]
            for ip, count in hits:
                args += [ip, str(count)]
            calls.append((keys, args))
            start += CHUNK
        return calls

    def _reply(self, req: SyncRequest, results: list[Any]) -> SyncReply:
        now_us, procs, _, blocks, hots = results[0]
        flat = [value for result in results for value in result[2]]
        limits = []
        at = 0
        for batch in req.limits:
            n = len(batch.keys)
            pairs = flat[2 * at : 2 * (at + n)]
            limits.append(LimitReply(pairs[0::2], [debt / 1e6 for debt in pairs[1::2]]))
            at += n
        block_list = []
        for _, fields in blocks:
            values = dict(zip(fields[0::2], fields[1::2], strict=True))
            block_list.append((values[b"ip"].decode(), int(values[b"u"]) / 1e6))
        hot_list = []
        for _, fields in hots:
            values = dict(zip(fields[0::2], fields[1::2], strict=True))
            hot_list.append((values[b"n"].decode(), values[b"k"].decode()))
        return SyncReply(
            now=now_us / 1e6,
            procs=procs,
            limits=limits,
            blocks=block_list,
            hot=hot_list,
            block_cursor=blocks[-1][0].decode() if blocks else req.block_cursor,
            hot_cursor=hots[-1][0].decode() if hots else req.hot_cursor,
        )
