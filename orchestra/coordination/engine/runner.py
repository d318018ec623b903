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
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

from orchestra.agents.base import BaseAgent
from orchestra.agents.pool import AgentPool
from orchestra.communication.channels import CommunicationManager, Question
from orchestra.coordination.state.records import decode
from orchestra.coordination.topology import USER
from orchestra.errors import (
    AgentStepError,
    BranchTimeoutError,
    InternalError,
    OrchestraError,
    RunTimeoutError,
    SessionError,
    StepTimeoutError,
    ToolInDoubtError,
    UserInputError,
)

from .core import Engine
from .state import Branch, BranchStatus, FanOut

if TYPE_CHECKING:
    from orchestra.coordination.state.journal import Journal


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
        journal: Journal | None = None,
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
        self.journal = journal
        self.pausing = False
        self.halted: Exception | None = None  # storage failed: the run stopped as if it crashed
        self.steps_in_flight = 0
        self._asking: dict[Branch, asyncio.Task[None]] = {}

    async def run(self, task: Any) -> None:
        """Start the run and drive it until it ends (or pauses)."""
        self._done = asyncio.get_running_loop().create_future()
        self.engine.start(task)
        self._apply_effects()
        await self._until_done()

    async def resume(self) -> None:
        """Drive a run whose engine state was rebuilt from its log: restart every branch that
        has something to do, re-arm timers (they start afresh), re-ask open questions."""
        self._done = asyncio.get_running_loop().create_future()
        engine = self.engine
        if engine.finished:
            self._done.set_result(None)
        for branch in engine.branches.values():
            if branch.ended:
                continue
            if self.branch_timeout is not None:
                self._arm(branch, self.branch_timeout, self._branch_timed_out, branch)
            if branch.status is not BranchStatus.WAITING and branch.agent != USER:
                self._spawn(branch)
        for fan_out in engine.fan_outs.values():
            if not fan_out.settled and self.convergence_timeout is not None:
                self._arm(fan_out, self.convergence_timeout, self._fan_out_timed_out, fan_out)
        await self._until_done()

    def pause(self) -> None:
        """Stop at the next step boundary: steps in flight finish (their results are kept),
        no new step starts, open questions are withdrawn (they are asked again on resume)."""
        self.pausing = True
        for task in self._asking.values():
            task.cancel()
        self._maybe_paused(ending=None)

    def _maybe_paused(self, ending: asyncio.Task[None] | None) -> None:
        """When pausing and no branch task but ``ending`` (the one finishing now) is working,
        the run has reached its step boundary."""
        busy = any(not t.done() and t is not ending for t in self._tasks.values())
        if self.pausing and not busy and self._done is not None and not self._done.done():
            self._done.set_result(None)

    async def _until_done(self) -> None:
        assert self._done is not None
        try:
            async with asyncio.timeout(self.run_timeout):
                await self._done
        except TimeoutError:
            error = RunTimeoutError(
                "timeout", f"the run exceeded its timeout({self.run_timeout:g}) rule"
            )
            if self.journal is not None:
                self.journal.abort(error, None)
            self.engine.abort(error)
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
        if branch.ended or self.engine.finished:
            return
        self._fail_branch(
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
        if fan_out.settled or self.engine.finished:
            return
        if self.journal is not None:
            self.journal.convergence_timed_out(fan_out)
        self.engine.convergence_timed_out(fan_out)
        self._apply_effects()

    def _fail_branch(self, branch: Branch, error: OrchestraError) -> None:
        if self.journal is not None:
            self.journal.branch_failed(branch, error)
        self.engine.branch_failed(branch, error)

    # ---- driving a branch --------------------------------------------------------------------

    async def _drive(self, branch: Branch) -> None:
        engine = self.engine
        try:
            while not engine.finished and not self.pausing and not branch.ended:
                if branch.pending_tools:
                    await self._tools_then_continue(branch)
                elif branch.question is not None:  # it asked the user and waits for the answer
                    await self._ask_user(branch)
                elif branch.status is BranchStatus.RUNNING:
                    if not await self._one_step(branch):
                        break
                else:
                    break
            self._apply_effects()
        except asyncio.CancelledError:
            if not branch.ended and not self.pausing:
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
            current = asyncio.current_task()
            if self._tasks.get(branch) is current:
                del self._tasks[branch]
            self._maybe_paused(ending=current)

    async def _one_step(self, branch: Branch) -> bool:
        """Take the branch's next step; False when it had none to take."""
        engine, journal = self.engine, self.journal
        if journal is not None and not await self._gate(branch, journal):
            return False
        try:
            agent = await self._agent_for(branch)
        except OrchestraError as error:
            self._fail_branch(branch, error)
            return False
        slots = self._slots
        if slots is not None:  # taken before the step begins, so a pause meanwhile stops it
            await slots.acquire()
        try:
            if self.pausing or engine.finished or branch.ended:
                return False
            request = engine.begin_step(branch)
            if request is None:
                return False
            if journal is not None:
                journal.step_begun(branch)  # durable with the next record that is
            before = len(request.messages)
            started = time.perf_counter()
            failure: BaseException | None = None
            self.steps_in_flight += 1
            try:
                if self.step_timeout is None:
                    outcome = await agent.step(request)
                else:
                    outcome = await self._timed_step(branch, agent, request)
            except asyncio.CancelledError:
                if _really_cancelled():
                    self.steps_in_flight -= 1
                    raise
                failure = AgentStepError(f"agent {branch.agent!r} raised CancelledError")
            except Exception as error:
                failure = error
            if journal is not None:
                added = request.messages[before:]
                if failure is None:
                    journal.step(branch, outcome, added, time.perf_counter() - started)
                else:
                    journal.step_failed(branch, failure, added)
            self.steps_in_flight -= 1
            if failure is None:
                engine.step_completed(branch, outcome, time.perf_counter() - started)
            else:
                engine.step_failed(branch, failure)
            self._apply_effects()
            return True
        finally:
            if slots is not None:
                slots.release()

    async def _tools_then_continue(self, branch: Branch) -> None:
        agent = self.agents[branch.agent]
        runner = branch.leases.get(branch.agent) if isinstance(agent, AgentPool) else agent
        if runner is None:
            runner = await self._agent_for(branch)
        results = await self._run_tools(branch, runner)
        if results is None:
            return  # the branch stopped: a call it cannot safely repeat was in doubt
        if self.journal is not None:
            self.journal.tools_completed(branch, results)
        self.engine.tools_completed(branch, results)
        self._apply_effects()

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

    async def _run_tools(self, branch: Branch, agent: BaseAgent) -> list[dict[str, Any]] | None:
        """Run the branch's pending tool calls (concurrently). With a journal, a call whose
        result is recorded is not run again, and one that started without a recorded result is
        re-run only if its tool is idempotent; otherwise the branch fails as in doubt."""
        journal = self.journal
        if journal is not None:
            for call in branch.pending_tools:
                known = journal.recorded_tool(branch, call)
                if (
                    known is not None
                    and known["t"] == "tool_started"
                    and not agent.is_idempotent(call.name)
                ):
                    self._fail_branch(
                        branch,
                        ToolInDoubtError(
                            f"tool {call.name!r} with arguments {dict(call.arguments)!r} (branch "
                            f"{branch.id}, call {call.call_id}) started before the run stopped and "
                            "has no recorded result; it is not idempotent, so it is not run again. "
                            "Check its effect, then continue the workflow yourself"
                        ),
                    )
                    self._apply_effects()
                    return None

        async def one(call: Any) -> dict[str, Any] | None:
            known = journal.recorded_tool(branch, call) if journal is not None else None
            if known is not None and known["t"] == "tool_done":
                return dict(decode(known["item"]))
            if journal is not None:
                journal.tool_started(branch, call)
                # whatever the policy, a non-idempotent tool's start must be durable first:
                # a lost start record would let it run twice
                wait = journal.gate if agent.is_idempotent(call.name) else journal.flush
                if not await self._durable(wait):
                    return None
            started = time.perf_counter()
            try:
                result, ok = await agent.call_tool(call), True
            except Exception as error:
                result, ok = f"{type(error).__name__}: {error}", False
            item = {
                "name": call.name,
                "call_id": call.call_id,
                "ok": ok,
                "result": result,
                "duration": time.perf_counter() - started,
            }
            if journal is not None:
                journal.tool_done(branch, call, item)
            return item

        results = await asyncio.gather(*(one(call) for call in branch.pending_tools))
        if any(result is None for result in results):
            return None  # the run halted: storage failed
        return [result for result in results if result is not None]

    async def _gate(self, branch: Branch, journal: Journal) -> bool:
        """Before an effect on the world: wait until what it depends on is durable. False when,
        meanwhile, the branch should stop (the run ended, halted or is pausing, the branch
        ended)."""
        if not await self._durable(journal.gate):
            return False
        return not (self.engine.finished or self.pausing or branch.ended)

    async def _durable(self, wait: Callable[[], Awaitable[None]]) -> bool:
        """``wait`` for records to be durable. A storage failure is retried a few times; if it
        persists, or storage refuses the session (another writer), the run halts as a crash
        would: nothing more happens, and the log keeps every durable step for a resume."""
        for delay in (*STORAGE_RETRY_DELAYS, None):
            try:
                await wait()
                return True
            except Exception as error:
                if delay is None or isinstance(error, SessionError):
                    self._halt(error)
                    return False
            await asyncio.sleep(delay)
        return False

    def _halt(self, error: Exception) -> None:
        if self.halted is None:
            self.halted = error
        if self._done is not None and not self._done.done():
            self._done.set_result(None)

    async def _ask_user(self, branch: Branch) -> None:
        if self.journal is not None and not await self._gate(branch, self.journal):
            return
        assert branch.question is not None
        question_id, text = branch.question
        question = Question(
            id=f"{self.engine.run_id}:{self._token}:{question_id}",
            run_id=self.engine.run_id,
            branch_id=branch.id,
            agent=branch.agent,
            text=text,
        )
        asking = asyncio.current_task()
        assert asking is not None
        self._asking[branch] = asking
        try:
            answer = await self.communication.ask(question)
        except OrchestraError as error:
            self._fail_branch(branch, error)
        except Exception as error:
            self._fail_branch(
                branch,
                UserInputError(
                    f"the user channel failed on {branch.agent!r}'s question {text!r}: "
                    f"{type(error).__name__}: {error}"
                ),
            )
        else:
            self._asking.pop(branch, None)  # answered: a pause must not lose the answer now
            if self.journal is not None:
                self.journal.user_answered(branch, answer)
            self.engine.user_answered(branch, answer)
        finally:
            self._asking.pop(branch, None)
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


STORAGE_RETRY_DELAYS = (0.05, 0.25, 1.0)
"""Seconds between retries of a write that storage failed (a dropped connection, a busy
database) before a durable run gives up and halts."""


def _really_cancelled() -> bool:
    """Whether the current task is being cancelled (not just handed a CancelledError by the
    code it ran, which is that code's failure)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
