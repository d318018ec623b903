"""Writer leases on a server: who holds a session, keeping the lease renewed, and telling a
holder that died from one that is merely quiet.

One writer at a time, across processes and machines: a session's writer holds a *lease* on the
server (Redis, PostgreSQL), taken by its first append and renewed by each append and by a
background task every third of ``lease_seconds``, until ``release``. Another writer is refused
while the lease is live. A holder whose process died loses its lease at once to a writer that
can see that process (below), and after ``lease_seconds`` (30 by default) to any other. Every
append checks the lease in the same atomic step as the records, so a writer that lost its lease
cannot append.

A holder names itself ``<id> <process space> <pid> <start>``: a random id per backend object,
the set of process ids its process lives in (the kernel's boot id and the process's pid
namespace on Linux; the host name elsewhere), its process id, and when that process started
(so a reused process id is not taken for the holder). A writer that finds a lease held by a
process of its own space that no longer runs (gone, a zombie, or another process under the
same id) takes the lease at once; a holder it cannot see (another machine, container, or
platform) keeps its lease until it expires.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import re
import socket
import uuid
import weakref
from collections.abc import Awaitable, Callable
from pathlib import Path

from orchestra.errors import ConfigurationError

LEASE_SECONDS = 30.0


class Leases:
    """The sessions a backend object writes, each with a task that renews its lease."""

    def __init__(self, seconds: float, renew: Callable[[str], Awaitable[bool]]) -> None:
        if not seconds >= 0.001:
            raise ConfigurationError(f"lease_seconds must be at least 0.001, got {seconds!r}")
        self.seconds = float(seconds)
        self._id = uuid.uuid4().hex
        self._renew = renew
        self._renewing: dict[str, asyncio.Task[None]] = {}
        self._token = (0, "")
        _LIVE[self._id] = self

    @property
    def token(self) -> str:
        """This backend object, in this process, as a lease holder."""
        pid, token = self._token
        if pid != os.getpid():  # first use, or a forked process: not its parent's holder
            pid = os.getpid()
            token = f"{self._id} {_SPACE} {pid} {_started(pid)}"
            self._token = (pid, token)
        return token

    @property
    def milliseconds(self) -> int:
        return max(1, math.ceil(self.seconds * 1000))

    def hold(self, session_id: str) -> None:
        """After an append: the lease is held; keep it renewed (on the running event loop)
        until ``stop``, or until this object is dropped."""
        task = self._renewing.get(session_id)
        loop = asyncio.get_running_loop()
        if task is None or task.done() or task.get_loop() is not loop:
            if task is not None:
                _cancel(task)
            self._renewing[session_id] = loop.create_task(
                _keep(weakref.ref(self), session_id), name=f"orchestra-lease-{session_id}"
            )

    def renewing(self, session_id: str, task: asyncio.Task[None] | None) -> bool:
        """Whether ``task`` is still the one keeping the session's lease (not stopped, not
        replaced)."""
        return self._renewing.get(session_id) is task

    async def stop(self, session_id: str) -> None:
        """Stop renewing the session's lease; returns once no renewal is under way (so a
        release that follows cannot be undone by one)."""
        task = self._renewing.pop(session_id, None)
        if task is None:
            return
        _cancel(task)
        if task.get_loop() is asyncio.get_running_loop():
            await asyncio.gather(task, return_exceptions=True)


async def _keep(leases: weakref.ref[Leases], session_id: str) -> None:
    """Renew a lease every third of its time; held weakly, so that a backend dropped without
    releasing its sessions stops renewing (its leases then expire).

    It ends when ``stop`` cancels it, and also on seeing, after each renewal, that it is no
    longer the session's renewer: a driver may swallow the cancel and answer the call
    (redis-py was seen to, with many sessions on one loop), and the task would then renew on
    for good, and ``stop``, waiting for it, would never return."""
    me = asyncio.current_task()
    while True:
        found = leases()
        if found is None or not found.renewing(session_id, me):
            return
        seconds, renew = found.seconds, found._renew
        del found
        await asyncio.sleep(seconds / 3)
        if leases() is None:
            return
        with contextlib.suppress(Exception):  # unreachable for now: the next tick tries
            if not await renew(session_id):
                return  # lost (expired and taken): the next append is refused


def abandoned(holder: str | None) -> bool:
    """Whether a lease's holder is a process of this process space that no longer runs, or a
    backend object of this very process that is gone: its lease may be taken at once."""
    parts = (holder or "").split(" ")
    if len(parts) != 4 or parts[1] != _SPACE or not _ASCII_NUMBER.fullmatch(parts[2]):
        return False
    identity, _, number, started = parts
    pid = int(number)
    if pid == os.getpid() and started == _started(pid):
        return identity not in _LIVE
    return not _running(pid, started)


_ASCII_NUMBER = re.compile(r"[0-9]{1,10}")


_LIVE: weakref.WeakValueDictionary[str, Leases] = weakref.WeakValueDictionary()
"""The lease holders of this process that still exist."""


def _cancel(task: asyncio.Task[None]) -> None:
    loop = task.get_loop()
    with contextlib.suppress(RuntimeError):  # its event loop is closed: it runs no more
        if loop is asyncio.get_running_loop():
            task.cancel()
        else:
            loop.call_soon_threadsafe(task.cancel)


def _process_space() -> str:
    """What names the process ids this process can see: the boot and the pid namespace (or,
    without /proc, the machine: its host name and hardware address)."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        return f"{boot}/{os.stat('/proc/self/ns/pid').st_ino}"
    except OSError:
        return f"{socket.gethostname() or 'unknown'}/{uuid.getnode():x}".replace(" ", "_")


def _stat(pid: int) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` after the command name (which may hold anything,
    even half a character); None where there is none to read."""
    try:
        data = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    return data[data.rindex(b")") + 2 :].decode("ascii", "replace").split()


def _started(pid: int) -> str:
    """When the process started (clock ticks since boot), or "-" where that is not known."""
    fields = _stat(pid)
    return fields[19] if fields else "-"


def _running(pid: int, started: str) -> bool:
    """Whether the process that took the lease still runs: alive, not a zombie, and not
    another process under the same id. When that cannot be told (no /proc entry to read, as
    under ``hidepid``, and no signal to probe with), it is taken to run."""
    fields = _stat(pid)
    if fields is not None:
        return fields[0] != "Z" and started in ("-", fields[19])
    if os.name != "posix":
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (OSError, OverflowError):  # alive, but not ours to signal; or no such id at all
        return True
    return True


_SPACE = _process_space()
