"""Processes: run a service on a fresh uvloop loop, or supervise N forked copies of it.

Imports the standard library and uvloop only; what a process serves comes from the caller's
factory, which is called in the child after the fork, so no event loop, socket pool or database
connection ever crosses a fork. Each child binds its own listeners (SO_REUSEPORT shares a port).

The supervisor is synchronous (no event loop): it forks, waits for signals and readiness
messages with select(), restarts children that die (at once when they had become ready and were
killed, with exponential backoff when they die young otherwise), and tells systemd
(`Type=notify`) READY=1 once every child listens and STOPPING=1 when it stops. SIGTERM/SIGINT:
forwarded to the children, which stop accepting, finish what is in flight within the grace
period and exit 0; the parent exits 0 when all are gone, or kills the stragglers `kill_after`
seconds past the grace and exits 1. Children watch a pipe whose write end only the parent
holds: if the parent dies, they stop too.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import select
import shutil
import signal
import socket
import struct
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import uvloop

log = logging.getLogger("panelsrv.procs")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_READY_MSG = struct.Struct("=i")  # the child's pid; pipe writes this small are atomic


class Runnable(Protocol):
    async def start(self) -> None: ...
    async def stop(self, grace: float) -> None: ...


@dataclass(frozen=True, slots=True)
class Slot:
    """Which worker this is: `index` in range(count); `run_dir` is shared by the siblings
    (None when running alone)."""

    index: int
    count: int
    run_dir: str | None


RunnableFactory = Callable[[Slot], Runnable]


class Group:
    """Several services as one: started in order, stopped in reverse order."""

    def __init__(self, *services: Runnable) -> None:
        self._services = services
        self._started: list[Runnable] = []

    async def start(self) -> None:
        for service in self._services:
            await service.start()
            self._started.append(service)

    async def stop(self, grace: float) -> None:
        while self._started:
            await self._started.pop().stop(grace)


def notify(state: bytes, address: str | None = None) -> bool:
    """Send one sd_notify datagram (e.g. b"READY=1") to `address` or $NOTIFY_SOCKET."""
    address = address if address is not None else os.environ.get("NOTIFY_SOCKET", "")
    if not address:
        return False
    if address.startswith("@"):  # abstract namespace
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        try:
            sock.sendto(state, address)
        except OSError as exc:
            log.warning("sd_notify %s failed: %s", state.decode(), exc.strerror)
            return False
    return True


# -- one process ---------------------------------------------------------------------------


def run_service(
    factory: RunnableFactory,
    slot: Slot,
    *,
    grace: float,
    on_ready: Callable[[], object] | None = None,
    on_stopping: Callable[[], object] | None = None,
    watch_fd: int | None = None,
) -> int:
    """Run `factory(slot)` on a new uvloop loop until SIGTERM/SIGINT (or `watch_fd` becomes
    readable: EOF of the parent's life pipe), then stop it with `grace`. Returns 0."""
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        return loop.run_until_complete(
            _serve(factory, slot, grace, on_ready, on_stopping, watch_fd)
        )
    finally:
        pending = asyncio.all_tasks(loop)
        for task in pending:
            task.cancel()
        loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
        asyncio.set_event_loop(None)
        loop.close()


async def _serve(
    factory: RunnableFactory,
    slot: Slot,
    grace: float,
    on_ready: Callable[[], object] | None,
    on_stopping: Callable[[], object] | None,
    watch_fd: int | None,
) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, stop.set)
    # The supervisor forks with these blocked so none is lost before the handlers exist.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {*STOP_SIGNALS, signal.SIGCHLD})
    if watch_fd is not None:

        def parent_gone() -> None:
            loop.remove_reader(watch_fd)
            log.warning("worker %d: supervisor is gone, stopping", slot.index)
            stop.set()

        loop.add_reader(watch_fd, parent_gone)
    service = factory(slot)
    await service.start()
    # What starting built (modules, tables, the catalog, pools) lives as long as the process:
    # frozen out of the cycle collector's generations, a full collection walks only what
    # serving allocated since (the whole heap took it 30-55 ms under connection churn); a
    # frozen object still goes by reference count, only a cycle among them would stay.
    gc.collect()
    gc.freeze()
    if on_ready is not None:
        on_ready()
    await stop.wait()
    if on_stopping is not None:
        on_stopping()
    await service.stop(grace)
    for sig in STOP_SIGNALS:
        loop.remove_signal_handler(sig)
    return 0


# -- N processes ---------------------------------------------------------------------------


@dataclass(slots=True)
class _Child:
    slot: int
    pid: int
    started: float
    ready: bool = False


class Supervisor:
    def __init__(
        self,
        factory: RunnableFactory,
        *,
        workers: int = 0,
        grace: float = 10.0,
        run_dir: str | None = None,
        notify_socket: str | None = None,
        min_uptime: float = 5.0,
        backoff: tuple[float, float] = (0.5, 30.0),
        max_start_failures: int = 5,
        kill_after: float = 5.0,
    ) -> None:
        """`workers` 0 means one per core this process may run on. A child that dies within
        `min_uptime` of its start is restarted after `backoff[0]` doubling up to `backoff[1]`,
        unless it had become ready and was killed by a signal (then at once);
        before the service has been READY once, `max_start_failures` such deaths of one slot
        give up (exit 1)."""
        self._factory = factory
        self._n = workers if workers > 0 else len(os.sched_getaffinity(0))
        self._grace = grace
        self._run_dir = run_dir
        self._notify = notify_socket
        self._min_uptime = min_uptime
        self._backoff = backoff
        self._max_start_failures = max_start_failures
        self._kill_after = kill_after
        self._children: dict[int, _Child] = {}  # by pid
        self._streak = [0] * self._n  # consecutive young deaths per slot
        self._restart_at: dict[int, float] = {}
        self._ready_once = False
        self._stop_requested = False
        self._stopping = False
        self._kill_at = 0.0
        self._failed = False
        self._fds: list[int] = []

    def run(self) -> int:
        """Supervise until stopped; returns the exit status for the process."""
        own_dir = self._run_dir is None
        run_dir = tempfile.mkdtemp(prefix="panelsrv-") if own_dir else self._run_dir
        assert run_dir is not None
        self._run_dir = run_dir
        if not own_dir:
            for name in os.listdir(run_dir):
                if name.startswith("metrics-"):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(os.path.join(run_dir, name))
        self._ready_r, self._ready_w = os.pipe()
        self._life_r, self._life_w = os.pipe()
        self._wake_r, self._wake_w = os.pipe()
        self._fds = [self._ready_r, self._ready_w, self._life_r, self._life_w]
        self._fds += [self._wake_r, self._wake_w]
        os.set_blocking(self._ready_r, False)
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        old_wakeup = signal.set_wakeup_fd(self._wake_w)
        old_handlers = {
            sig: signal.signal(sig, self._on_signal) for sig in (*STOP_SIGNALS, signal.SIGCHLD)
        }
        try:
            for slot in range(self._n):
                self._spawn(slot)
            self._loop()
        finally:
            signal.set_wakeup_fd(old_wakeup)
            for sig, handler in old_handlers.items():
                signal.signal(sig, handler)
            for fd in self._fds:
                os.close(fd)
            if own_dir:
                shutil.rmtree(run_dir, ignore_errors=True)
        return 1 if self._failed else 0

    def _on_signal(self, signum: int, frame: object) -> None:
        if signum != signal.SIGCHLD:
            self._stop_requested = True

    def _loop(self) -> None:
        while True:
            now = time.monotonic()
            if self._stop_requested and not self._stopping:
                self._begin_stop(now)
            if self._stopping:
                if not self._children:
                    return
                if now >= self._kill_at:
                    for child in self._children.values():
                        log.error("worker %d (pid %d) did not stop; killing", child.slot, child.pid)
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(child.pid, signal.SIGKILL)
                    self._failed = True
                    self._kill_at = now + 1.0
                timeout: float | None = max(0.0, self._kill_at - now)
            else:
                for slot, at in list(self._restart_at.items()):
                    if at <= now:
                        del self._restart_at[slot]
                        self._spawn(slot)
                timeout = min(self._restart_at.values(), default=now + 3600.0) - now
            readable, _, _ = select.select([self._wake_r, self._ready_r], [], [], timeout)
            if self._wake_r in readable:
                with contextlib.suppress(BlockingIOError):
                    while os.read(self._wake_r, 512):
                        pass
            if self._ready_r in readable:
                self._read_ready()
            self._reap()

    def _spawn(self, slot: int) -> None:
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {*STOP_SIGNALS, signal.SIGCHLD})
        try:
            pid = os.fork()
        except OSError as exc:  # out of processes or memory: try again later
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
            log.error("cannot start worker %d: %s", slot, exc.strerror)
            self._restart_at[slot] = time.monotonic() + self._backoff[1]
            return
        if pid == 0:  # the child: never returns
            code = 1
            try:
                signal.set_wakeup_fd(-1)
                for sig in (*STOP_SIGNALS, signal.SIGCHLD):
                    signal.signal(sig, signal.SIG_DFL)
                for fd in (self._ready_r, self._life_w, self._wake_r, self._wake_w):
                    os.close(fd)
                message = _READY_MSG.pack(os.getpid())
                code = run_service(
                    self._factory,
                    Slot(slot, self._n, self._run_dir),
                    grace=self._grace,
                    on_ready=lambda: os.write(self._ready_w, message),
                    watch_fd=self._life_r,
                )
            except BaseException:
                log.exception("worker %d failed", slot)
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        self._children[pid] = _Child(slot, pid, time.monotonic())
        log.info("worker %d started (pid %d)", slot, pid)

    def _read_ready(self) -> None:
        try:
            data = os.read(self._ready_r, 4096)
        except BlockingIOError:
            return
        for offset in range(0, len(data) - len(data) % _READY_MSG.size, _READY_MSG.size):
            (pid,) = _READY_MSG.unpack_from(data, offset)
            child = self._children.get(pid)
            if child is not None:
                child.ready = True
        if not self._ready_once and not self._stopping:
            ready = {c.slot for c in self._children.values() if c.ready}
            if len(ready) == self._n:
                self._ready_once = True
                log.info("%d workers ready", self._n)
                notify(b"READY=1", self._notify)

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            child = self._children.pop(pid, None)
            if child is None:
                continue
            code = os.waitstatus_to_exitcode(status)
            if self._stopping:
                if code != 0:
                    log.warning("worker %d (pid %d) exited with %d", child.slot, pid, code)
                    self._failed = True
                continue
            self._schedule_restart(child, code)

    def _schedule_restart(self, child: _Child, code: int) -> None:
        lived = time.monotonic() - child.started
        slot = child.slot
        # A child that reached readiness and was killed (an OOM kill, an operator, a chaos
        # run) did start: it is replaced at once, however soon it died, or every such death
        # would cost seconds of a smaller (or, with one worker, no) listener. One that exited
        # on its own soon after is crashing: backoff, or it would restart at full speed.
        if (child.ready and code < 0) or lived >= self._min_uptime:
            self._streak[slot] = 0
            delay = 0.0
        else:
            self._streak[slot] += 1
            delay = min(self._backoff[1], self._backoff[0] * 2 ** (self._streak[slot] - 1))
        how = f"killed by signal {-code}" if code < 0 else f"exited with {code}"
        log.error("worker %d (pid %d) %s; restarting in %.1fs", slot, child.pid, how, delay)
        if not self._ready_once and self._streak[slot] >= self._max_start_failures:
            log.error("worker %d keeps failing at start; giving up", slot)
            self._failed = True
            self._stop_requested = True
            return
        self._restart_at[slot] = time.monotonic() + delay

    def _begin_stop(self, now: float) -> None:
        self._stopping = True
        self._restart_at.clear()
        notify(b"STOPPING=1", self._notify)
        log.info("stopping %d workers (grace %.1fs)", len(self._children), self._grace)
        for child in self._children.values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, signal.SIGTERM)
        self._kill_at = now + self._grace + self._kill_after


def supervise(
    factory: RunnableFactory,
    *,
    workers: int = 0,
    grace: float = 10.0,
    run_dir: str | None = None,
    notify_socket: str | None = None,
) -> int:
    """The entry point of `panelsrv serve`: N workers running `factory`, until SIGTERM/SIGINT."""
    supervisor = Supervisor(
        factory, workers=workers, grace=grace, run_dir=run_dir, notify_socket=notify_socket
    )
    return supervisor.run()
