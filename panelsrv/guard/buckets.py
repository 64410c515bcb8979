"""Per-key token buckets as GCRA: one float per key, the clock passed in.

Leaf module: imports nothing from panelsrv, reads no clock. `now` is any monotonic float in
seconds chosen by the caller.

GCRA (the generic cell rate algorithm) keeps, per key, the theoretical arrival time `tat`: the
moment the bucket is full again. With emission interval T = 1/rate and tolerance tau = burst * T,
a request at `now` is admitted when max(tat, now) + T - now <= tau, and then tat advances by T.
This is exactly a token bucket of `burst` tokens refilled at `rate`: `burst` requests pass at
once from a full bucket, then one every T.

Invariants:
- A key whose `tat <= now` is a full bucket, indistinguishable from an absent key, so dropping it
  loses nothing. `sweep` and the insert path drop such keys; memory follows the number of keys
  that are not full, i.e. the keys that were active within the last burst/rate seconds.
- At most `max_keys` entries, whatever the flood. When an insert finds the table at the cap and
  dropping full buckets does not free a quarter of it, the half of the table closest to full is
  forgiven (dropped): each of those keys regains at most the tokens it was short of. The keys
  deepest in debt, the abusers, are the ones kept, so the cap fails in the safe direction for an
  availability limit; distinct addresses already have a bucket each, so forgiving an address that
  used a few tokens gives an attacker nothing a new address would not. The rebuild costs
  O(max_keys log max_keys) once per max_keys/4 new keys at the cap (measured in
  tests/guard/test_guard_buckets.py: about 7 ms at 65,536 keys), so `take` is amortised O(1).
"""

from __future__ import annotations

import math
from collections.abc import Hashable


class Buckets:
    """GCRA token buckets keyed by any hashable (an IP string, a user id)."""

    __slots__ = ("_burst", "_interval", "_max_keys", "_rate", "_tat", "_tau")

    def __init__(self, rate: float, burst: int, max_keys: int = 65_536) -> None:
        if rate <= 0 or burst < 1 or max_keys < 4:
            raise ValueError("rate > 0, burst >= 1 and max_keys >= 4 are required")
        self._rate = rate
        self._burst = burst
        self._interval = 1.0 / rate
        self._tau = burst / rate
        self._max_keys = max_keys
        self._tat: dict[Hashable, float] = {}

    @property
    def rate(self) -> float:
        return self._rate

    @property
    def burst(self) -> int:
        return self._burst

    def __len__(self) -> int:
        return len(self._tat)

    def take(self, key: Hashable, now: float) -> float:
        """Take one token: 0.0 when admitted, else the seconds until a token is available."""
        tats = self._tat
        tat = tats.get(key)
        if tat is None:
            if len(tats) >= self._max_keys:
                self._make_room(now)
            tat = now
        elif tat < now:
            tat = now
        tat += self._interval
        over = tat - now - self._tau
        if over > 1e-9:  # float slack: `burst` takes at one instant must all pass
            return over
        tats[key] = tat
        return 0.0

    def debt(self, key: Hashable, now: float) -> int:
        """Tokens the key is short of a full bucket (0 for a full or unknown key), rounded up."""
        tat = self._tat.get(key)
        if tat is None or tat <= now:
            return 0
        return math.ceil((tat - now) * self._rate - 1e-9)

    def drain(self, key: Hashable, now: float) -> None:
        """Empty the key's bucket: it refills from zero at `rate`, with no burst in hand."""
        if len(self._tat) >= self._max_keys and key not in self._tat:
            self._make_room(now)
        self._tat[key] = max(self._tat.get(key, now), now + self._tau)

    def reconfigure(self, rate: float, burst: int, now: float) -> None:
        """Change rate and burst, keeping each key's used tokens (not its time to refill)."""
        if rate <= 0 or burst < 1:
            raise ValueError("rate > 0 and burst >= 1 are required")
        scale = self._rate / rate
        self._tat = {k: now + (t - now) * scale for k, t in self._tat.items() if t > now}
        self._rate = rate
        self._burst = burst
        self._interval = 1.0 / rate
        self._tau = burst / rate

    def sweep(self, now: float) -> int:
        """Drop every full bucket; returns how many were dropped. Rebuilt so the dict shrinks."""
        before = len(self._tat)
        self._tat = {k: t for k, t in self._tat.items() if t > now}
        return before - len(self._tat)

    def _make_room(self, now: float) -> None:
        self.sweep(now)
        if len(self._tat) <= self._max_keys * 3 // 4:
            return
        keep = self._max_keys // 2
        # The `keep` largest TATs are the keys deepest in debt; ties may keep a few more.
        cut = sorted(self._tat.values())[-keep]
        self._tat = {k: t for k, t in self._tat.items() if t >= cut}
        if len(self._tat) > self._max_keys * 3 // 4:  # all equal: drop arbitrary ones
            self._tat = dict(list(self._tat.items())[-keep:])
