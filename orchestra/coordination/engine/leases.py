"""Pooled agents lent to branches: a branch holds an instance of a pool while it works at that
node, and gives it back when it moves on or ends (``Branch.leases``)."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Mapping

from orchestra.agents.base import BaseAgent
from orchestra.agents.pool import AgentPool

from .branches import Branch


async def lease(pool: AgentPool, pause_requested: asyncio.Event) -> BaseAgent | None:
    """An instance of the pool, or None if the run is asked to pause first (a pause does not
    wait for instances others hold: maybe another session's steps)."""
    if pool.available:
        return await pool.acquire()
    leasing = asyncio.ensure_future(pool.acquire())
    pausing = asyncio.ensure_future(pause_requested.wait())
    try:
        await asyncio.wait((leasing, pausing), return_when=asyncio.FIRST_COMPLETED)
    except BaseException:  # the branch was cancelled: an instance it got goes back
        leasing.add_done_callback(functools.partial(_returned, pool))
        leasing.cancel()
        raise
    finally:
        pausing.cancel()
    if leasing.done():
        return leasing.result()
    leasing.cancel()  # a queue's get gives up its place, taking nothing
    return None


def give_back(agents: Mapping[str, BaseAgent | AgentPool], branch: Branch, name: str) -> None:
    """The branch's instance of the pool ``name`` goes back to it."""
    pool = agents[name]
    instance = branch.leases.pop(name)
    if isinstance(pool, AgentPool):
        pool.release(instance)


def give_all_back(agents: Mapping[str, BaseAgent | AgentPool], branch: Branch) -> None:
    for name in list(branch.leases):
        give_back(agents, branch, name)


def _returned(pool: AgentPool, leasing: asyncio.Future[BaseAgent]) -> None:
    if not leasing.cancelled() and leasing.exception() is None:
        pool.release(leasing.result())
