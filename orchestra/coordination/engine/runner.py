"""The async edge of the engine: runs agent steps, tools, questions and timers.

Each branch is driven by its own task, which loops over that branch's steps. There is no
global barrier: a branch waits only for what it asked for (its fan-out, its user answer), so a
slow branch never delays an unrelated one. The runner feeds what happened to the core and
carries out the effects the core asks for.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Mapping
from typing import Any

from orchestra.agents.base import BaseAgent
from orchestra.agents.pool import AgentPool
from orchestra.communication.channels import CommunicationManager, Question
from orchestra.errors import (
    AgentStepError,
    BranchTimeoutError,
    InternalError,
    OrchestraError,
    RunTimeoutError,
    StepTimeoutError,
    UserInputError,
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
        self._token = uuid.uuid4().hex[:12]  # question ids stay unique across runs

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
                self._let_go(target)
            elif kind == "ended":
                self._let_go(target)
            elif kind == "arm_branch":
                if self.branch_timeout is not None:
                    self._arm(target, self.branch_timeout, self._branch_timed_out, target)
            elif kind == "arm_fan_out":
                if self.convergence_timeout is not None:
                    self._arm(target, self.convergence_timeout, self._fan_out_timed_out, target)
            elif kind == "settled":
                self._disarm(target)
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
        task = self._tasks.get(branch)
        if task is not None and not task.done() and task is not asyncio.current_task():
            task.cancel()

    def _let_go(self, branch: Branch) -> None:
        """An ended branch holds nothing: no timer, no pooled agent."""
        self._disarm(branch)
        self._release(branch)

    def _arm(self, key: object, delay: float, callback: Any, target: Any) -> None:
        self._timers[key] = asyncio.get_running_loop().call_later(delay, callback, target)

    def _disarm(self, key: object) -> None:
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()

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
            while branch.status is BranchStatus.RUNNING and not engine.finished:
                try:
                    agent = await self._agent_for(branch)
                except OrchestraError as error:
                    engine.branch_failed(branch, error)
                    break
                request = engine.begin_step(branch)
                if request is None:
                    break
                started = time.perf_counter()
                try:
                    outcome = await self._step(branch, agent, request)
                except asyncio.CancelledError:
                    if _really_cancelled():
                        raise
                    engine.step_failed(
                        branch, AgentStepError(f"agent {branch.agent!r} raised CancelledError")
                    )
                except Exception as error:
                    engine.step_failed(branch, error)
                else:
                    engine.step_completed(branch, outcome, time.perf_counter() - started)
                self._apply_effects()
                if branch.pending_tools:
                    results = await self._run_tools(branch, agent)
                    engine.tools_completed(branch, results)
                    self._apply_effects()
                if branch.question is not None:  # it asked the user (set while it waits)
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
            self._release(branch)  # a branch that stops working (waits, ends) lends nothing
            if self._tasks.get(branch) is asyncio.current_task():
                del self._tasks[branch]

    async def _step(self, branch: Branch, agent: BaseAgent, request: Any) -> Any:
        slots = self._slots
        if slots is None and self.step_timeout is None:
            return await agent.step(request)
        if slots is None:
            return await self._timed_step(branch, agent, request)
        async with slots:  # the step's time limit starts once it has a slot
            return await self._timed_step(branch, agent, request)

    async def _timed_step(self, branch: Branch, agent: BaseAgent, request: Any) -> Any:
        limit = asyncio.timeout(self.step_timeout)
        try:
            async with limit:
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
        """The agent for the branch's next step; a pooled one is leased while the branch works
        at that node (a lease for any other node is returned first)."""
        name = branch.agent
        for held in [other for other in branch.leases if other != name]:
            self._return_lease(branch, held)
        found = self.agents[name]
        if not isinstance(found, AgentPool):
            return found
        lease = branch.leases.get(name)
        if lease is None:
            lease = branch.leases[name] = await found.acquire()
        return lease

    def _return_lease(self, branch: Branch, name: str) -> None:
        pool = self.agents[name]
        instance = branch.leases.pop(name)
        if isinstance(pool, AgentPool):
            pool.release(instance)

    def _release(self, branch: Branch) -> None:
        for name in list(branch.leases):
            self._return_lease(branch, name)

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
            id=f"{self.engine.run_id}:{self._token}:{question_id}",
            run_id=self.engine.run_id,
            branch_id=branch.id,
            agent=branch.agent,
            text=text,
        )
        try:
            answer = await self.communication.ask(question)
        except OrchestraError as error:
            self.engine.branch_failed(branch, error)
        except Exception as error:
            self.engine.branch_failed(
                branch,
                UserInputError(
                    f"the user channel failed on {branch.agent!r}'s question {text!r}: "
                    f"{type(error).__name__}: {error}"
                ),
            )
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


def _really_cancelled() -> bool:
    """Whether the current task is being cancelled (not just handed a CancelledError by the
    code it ran, which is that code's failure)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
