"""The harness itself: tests run on uvloop, a loop that logged an error fails the test, and
fixture names are unique."""

from __future__ import annotations

import asyncio

import pytest
import uvloop

from tests.conftest import run_async
from tests.store.helpers import unique


async def test_runs_on_uvloop() -> None:
    assert isinstance(asyncio.get_running_loop(), uvloop.Loop)


def test_unretrieved_task_exception_fails_the_test() -> None:
    async def leaky() -> None:
        async def boom() -> None:
            raise RuntimeError("nobody awaits me")

        task = asyncio.get_running_loop().create_task(boom())
        await asyncio.wait([task])  # done, its exception not retrieved
        del task

    with pytest.raises(pytest.fail.Exception, match="unhandled exception"):
        run_async(leaky())


def test_failing_callback_fails_the_test() -> None:
    async def callback_raises() -> None:
        loop = asyncio.get_running_loop()
        ran = loop.create_future()
        loop.call_soon(lambda: 1 / 0)
        loop.call_soon(ran.set_result, None)  # after the failing one
        await ran

    with pytest.raises(pytest.fail.Exception, match="ZeroDivisionError"):
        run_async(callback_raises())


def test_unique_names_never_collide() -> None:
    # 200,000 draws of 32 random bits repeat one with probability ~99 %
    assert len({unique("m") for _ in range(200_000)}) == 200_000
