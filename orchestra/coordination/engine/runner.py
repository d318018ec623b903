"""The async edge of the engine: runs agent steps, tools, questions and timers.

Each branch is driven by its own task, which loops over that branch's steps. There is no
global barrier: a branch waits only for what it asked for (its fan-out, its user answer), so a
slow branch never delays an unrelated one. The runner feeds what happened to the core and
carries out the effects the core asks for.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any

from orchestra.agents.base import BaseAgent
from orchestra.agents.pool import AgentPool
from orchestra.communication.channels import CommunicationManager, Question
from orchestra.errors import (
    BranchTimeoutError,
    InternalError,
    OrchestraError,
    RunTimeoutError,
    StepTimeoutError,
)

from .core import Engine
from .state import Branch, BranchStatus, FanOut


class Runner:
    def __init__(
        self,
        engine: Engine,
        agents: Mapping[str, BaseAgent | AgentPool],
        communication: CommunicationManager,
        *,
        step_timeout: float | None,
        branch_timeout: float | None,
        convergence_timeout: float | None,
        run_timeout: float | None,
        max_agents: int | None,
    ) -> None:
        self.engine = engine
        self.agents = agents
        self.communication = communication
        self.step_timeout = step_timeout
        self.branch_timeout = branch_timeout
        self.convergence_timeout = convergence_timeout
        self.run_timeout = run_timeout
        self._slots = asyncio.Semaphore(max_agents) if max_agents else None
        self._tasks: dict[Branch, asyncio.Task[None]] = {}
        self._timers: dict[object, asyncio.TimerHandle] = {}
        self._done: asyncio.Future[None] | None = None

    async def run(self, task: Any) -> None:
        loop = asyncio.get_running_loop()
        self._done = loop.create_future()
        self.engine.start(task)
        self._apply_effects()
        try:
            async with asyncio.timeout(self.run_timeout):
                await self._done
        except TimeoutError:
            self.engine.abort(
                RunTimeoutError(
                    "timeout", f"the run exceeded its timeout({self.run_timeout:g}) rule"
                )
            )
            self._apply_effects()
        finally:
            await self._shutdown()

    # ---- effects -----------------------------------------------------------------------------

    def _apply_effects(self) -> None:
        effects = self.engine.effects
        if not effects:
            return
        for kind, target in effects:
            if kind == "spawn":
                self._spawn(target)
            elif kind == "cancel":
                self._cancel(target)
            elif kind == "arm_branch":
                if self.branch_timeout is not None:
                    self._arm(target, self.branch_timeout, self._branch_timed_out, target)
            elif kind == "arm_fan_out":
                if self.convergence_timeout is not None:
                    self._arm(target, self.convergence_timeout, self._fan_out_timed_out, target)
            elif self._done is not None and not self._done.done():
                self._done.set_result(None)
        effects.clear()

    def _spawn(self, branch: Branch) -> None:
        running = self._tasks.get(branch)
        if running is not None and not running.done():
            return
        self._tasks[branch] = asyncio.get_running_loop().create_task(
            self._drive(branch), name=f"orchestra-{self.engine.run_id}-{branch.id}"
        )

    def _cancel(self, branch: Branch) -> None:
        timer = self._timers.pop(branch, None)
        if timer is not None:
            timer.cancel()
        task = self._tasks.get(branch)
        if task is not None and not task.done() and task is not asyncio.current_task():
            task.cancel()
        if branch.waiting_on is not None:
            timer = self._timers.pop(branch.waiting_on, None)
            if timer is not None:
                timer.cancel()

    def _arm(self, key: object, delay: float, callback: Any, target: Any) -> None:
        self._timers[key] = asyncio.get_running_loop().call_later(delay, callback, target)

    def _branch_timed_out(self, branch: Branch) -> None:
        self._timers.pop(branch, None)
        if branch.ended:
            return
        self.engine.branch_failed(
            branch,
            BranchTimeoutError(
                "branch_timeout",
                f"branch {branch.id} (at {branch.agent!r}) exceeded "
                f"branch_timeout={self.branch_timeout:g}s",
            ),
        )
        self._apply_effects()

    def _fan_out_timed_out(self, fan_out: FanOut) -> None:
        self._timers.pop(fan_out, None)
        self.engine.convergence_timed_out(fan_out)
        self._apply_effects()

    # ---- driving a branch --------------------------------------------------------------------

    async def _drive(self, branch: Branch) -> None:
        engine = self.engine
        try:
            while True:
                request = engine.begin_step(branch)
                if request is None:
                    break
                started = time.perf_counter()
                try:
                    agent = await self._agent_for(branch)
                    outcome = await self._step(branch, agent, request)
                except Exception as error:
                    engine.step_failed(branch, error)
                else:
                    engine.step_completed(branch, outcome, time.perf_counter() - started)
                self._apply_effects()
                if branch.pending_tools:
                    results = await self._run_tools(branch, agent)
                    engine.tools_completed(branch, results)
                elif branch.status is BranchStatus.WAITING_USER:
                    await self._ask_user(branch)
            self._apply_effects()
        except asyncio.CancelledError:
            if not branch.ended:
                raise
        except Exception as error:
            failure = InternalError(
                f"internal error while driving branch {branch.id} at {branch.agent!r}: "
                f"{type(error).__name__}: {error}"
            )
            failure.__cause__ = error
            engine.abort(failure, branch)
            self._apply_effects()
        finally:
            if branch.ended:
                self._release(branch)

    async def _step(self, branch: Branch, agent: BaseAgent, request: Any) -> Any:
        slots = self._slots
        if slots is None and self.step_timeout is None:
            return await agent.step(request)
        limit = asyncio.timeout(self.step_timeout)
        try:
            if slots is None:
                async with limit:
                    return await agent.step(request)
            async with slots, limit:
                return await agent.step(request)
        except TimeoutError:
            if not limit.expired():
                raise  # the agent's own timeout (an HTTP client's, say): its failure
            raise StepTimeoutError(
                "step_timeout",
                f"agent {branch.agent!r} (branch {branch.id}) took longer than "
                f"step_timeout={self.step_timeout:g}s",
            ) from None

    async def _agent_for(self, branch: Branch) -> BaseAgent:
        name = branch.agent
        found = self.agents[name]
        if not isinstance(found, AgentPool):
            return found
        lease = branch.leases.get(name)
        if lease is None:
            lease = branch.leases[name] = await found.acquire()
        return lease

    def _release(self, branch: Branch) -> None:
        for name, instance in branch.leases.items():
            pool = self.agents[name]
            if isinstance(pool, AgentPool):
                pool.release(instance)
        branch.leases.clear()

    async def _run_tools(self, branch: Branch, agent: BaseAgent) -> list[dict[str, Any]]:
        async def one(call: Any) -> dict[str, Any]:
            started = time.perf_counter()
            try:
                result, ok = await agent.call_tool(call), True
            except Exception as error:
                result, ok = f"{type(error).__name__}: {error}", False
            return {
                "name": call.name,
                "call_id": call.call_id,
                "ok": ok,
                "result": result,
                "duration": time.perf_counter() - started,
            }

        return list(await asyncio.gather(*(one(call) for call in branch.pending_tools)))

    async def _ask_user(self, branch: Branch) -> None:
        assert branch.question is not None
        question_id, text = branch.question
        question = Question(
            id=f"{self.engine.run_id}:{question_id}",
            run_id=self.engine.run_id,
            branch_id=branch.id,
            agent=branch.agent,
            text=text,
        )
        try:
            answer = await self.communication.ask(question)
        except OrchestraError as error:
            self.engine.branch_failed(branch, error)
        else:
            self.engine.user_answered(branch, answer)
        self._apply_effects()

    # ---- the end -----------------------------------------------------------------------------

    async def _shutdown(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        pending = [task for task in self._tasks.values() if not task.done()]
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
        for branch in self.engine.branches.values():
            self._release(branch)
