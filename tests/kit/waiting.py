"""The one bounded poll of the test suite: wait for a condition, never for a time.

A test that needs something to have happened elsewhere (another process, the worker's loop, a
socket) asks `until(condition)`: the condition is looked at every `interval` seconds, and the
test fails with `what` if it does not hold within `timeout`. The interval only paces the looks;
no test passes because of it. `condition` is a function returning a truth value, or a
coroutine function (an async look, e.g. a query); it may itself assert, to fail early (a
process that died while the test waited for it).
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable

SHORT = 2.0  # seconds: what a single step inside one process may take
INTERVAL = 0.01  # seconds between two looks


class _Window:
    """The time a wait may take: how long it has taken, and the failure once it is over."""

    def __init__(self, timeout: float, what: object) -> None:
        self.started = time.monotonic()
        self.timeout = timeout
        self.what = what

    def waited(self) -> float:
        return time.monotonic() - self.started

    def check(self) -> None:
        if self.waited() > self.timeout:
            raise AssertionError(f"not within {self.timeout} s: {self.what}")


async def until(
    condition: Callable[[], object], timeout: float = SHORT, *, interval: float = INTERVAL,
    what: object = None,
) -> float:  # fmt: skip
    """Seconds it took until `condition()` (awaited when it returns an awaitable) held."""
    window = _Window(timeout, what or condition)
    while True:
        met = condition()
        if inspect.isawaitable(met):
            met = await met
        if met:
            return window.waited()
        window.check()
        await asyncio.sleep(interval)


def until_sync(
    condition: Callable[[], object], timeout: float = SHORT, *, interval: float = INTERVAL,
    what: object = None,
) -> float:  # fmt: skip
    """`until` for code that has no running loop (a plain test, a fixture, a thread)."""
    window = _Window(timeout, what or condition)
    while not condition():
        window.check()
        time.sleep(interval)
    return window.waited()
