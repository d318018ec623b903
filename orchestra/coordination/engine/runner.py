"""The async edge of the engine: runs agent steps, tools, questions and timers.

Each branch is driven by its own task, which loops over that branch's steps. There is no
global barrier: a branch waits only for what it asked for (its fan-out, its user answer), so a
slow branch never delays an unrelated one. Whatever happens becomes an input (:mod:`.inputs`),
stamped with the time it happened, and goes through one function, :meth:`Runner.feed`: it is
journaled (with a session) and applied to the core, and the runner carries out the effects
the core returns. A replayed log is those same inputs applied again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

import msgspec

from orchestra.agents.base import BaseAgent
from orchestra.agents.contract import StepOutcome, as_taken
from orchestra.agents.pool import AgentPool
from orchestra.communication.channels import CommunicationManager
from orchestra.coordination.topology import USER
from orchestra.errors import (
    AgentStepError,
    BranchTimeoutError,
    InternalError,
    ModelAPIError,
    OrchestraError,
    RunTimeoutError,
    SessionCorruptedError,
    StepTimeoutError,
    UnstorableValueError,
)
from orchestra.models.base import Message

from . import inputs as inp
from . import leases, rounds, tool_calls
from .branches import Branch, BranchStatus
from .clock import WALL, Clock, within
from .core import Engine
from .deltas import listen
from .effects import (
    ArmBranchTimer,
    ArmConvergenceTimer,
    Cancel,
    Disarm,
    Effect,
    LetGo,
    RoundBegun,
    RoundOver,
    RunFinished,
    Spawn,
    TakeStep,
)
from .lifecycle import turn_over
from .questions import OpenQuestions, abandoned, really_cancelled
from .step_errors import as_step_error, unstorable_step


class Journal(Protocol):
    """Where a durable run records its inputs (``orchestra.coordination.state.journal``)."""

    run: str  # the run's name in its session's log (RunLog.name): its questions' ids hold it

    def record(self, item: inp.Record, due: bool) -> None:
        """Record ``item``; raise (``UnstorableValueError``) if it cannot be stored. A due
        record must be durable before the run's next effect on the world."""

    async def gate(self) -> None:
        """Return once the due records are durable."""

    async def flush(self) -> None:
        """Return once every record so far is durable."""


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
        clock: Clock = WALL,
    ) -> None:
        self.engine = engine
        self.clock = clock  # every input's time, and the steps' durations
        self.agents = agents
        self.communication = communication
        self.step_timeout = step_timeout
        self.branch_timeout = branch_timeout
        self.convergence_timeout = convergence_timeout
        self.run_timeout = run_timeout
        self._slots = asyncio.Semaphore(max_agents) if max_agents else None
        self._tasks: dict[str, asyncio.Task[None]] = {}  # by branch id
        self._timers: dict[str, asyncio.TimerHandle] = {}  # by branch or fan-out id
        self._done: asyncio.Future[None] | None = None
        self._run_limit: asyncio.Timeout | None = None  # the run's timeout rule, while driven
        self.journal = journal
        self.pausing = False
        self._pause_requested = asyncio.Event()  # wakes what waits on others (a pooled agent)
        self.halted: Exception | None = None  # storage failed: the run stopped as if it crashed
        self.loop: asyncio.AbstractEventLoop | None = None  # the loop driving the run
        self.steps_in_flight = 0
        self.questions = OpenQuestions()
        self._held: list[str] | None = None  # branches to start once the run is driven
        self._held_timers: list[tuple[str, float, Callable[[str], None], str]] = []

    def feed(self, item: inp.Input, due: bool = True) -> list[Effect]:
        """What happened: journal it (a session's log), apply it, carry out its effects.

        Raises ``UnstorableValueError`` (and applies nothing) when the journal cannot store
        it. A record that is not ``due`` (a step's beginning, a retry) need not be durable by
        itself: it travels with the next one that is."""
        if self.journal is not None:
            self.journal.record(item, due)
        effects = self.engine.apply(item)
        self._carry_out(effects)
        return effects

    def start(self, first: inp.RunStart) -> None:
        """Begin a new run: its header is its first input. No branch works, and no timer
        runs, until ``drive`` (by then a session has made the header durable; a run that
        never gets there leaves nothing behind that could write to its session)."""
        self._done = asyncio.get_running_loop().create_future()
        self._held = []
        self.feed(first)

    def resume(self, item: inp.RunResume) -> None:
        """Go on with a run whose engine was rebuilt from its log: every branch that has
        something to do works again once ``drive`` is called; timers start afresh, open
        questions are asked again. A run that has work left and no branch to do it is damage,
        found before anything is written."""
        engine = self.engine
        working = sorted(
            (branch for branch in engine.branches.values() if not branch.ended),
            key=lambda branch: branch.ready,
        )
        starting = [
            b
            for b in working
            if b.status is not BranchStatus.WAITING and (b.agent != USER or b.question is not None)
        ]
        if not engine.finished and not starting:
            raise SessionCorruptedError(
                f"session {engine.run_id!r} was rebuilt with work left but no branch to do it: "
                "its log (or snapshot) does not describe a run Orchestra made"
            )
        self._done = asyncio.get_running_loop().create_future()
        self._held = []
        self.feed(item)
        if engine.finished:
            self._done.set_result(None)
        for branch in working:  # in the order they got their work, as in the live run
            if self.branch_timeout is not None and not rounds.waiting(engine):
                self._arm(branch.id, self.branch_timeout, self._branch_timed_out, branch.id)
        for branch in starting:
            self._spawn(branch.id)
        for fan_out in engine.fan_outs.values():
            if not fan_out.settled and self.convergence_timeout is not None:
                self._arm(fan_out.id, self.convergence_timeout, self._fan_out_timed_out, fan_out.id)

    async def drive(self) -> None:
        """Run until the run ends (or pauses, or storage halts it)."""
        self.loop = asyncio.get_running_loop()
        held, self._held = self._held or [], None
        for branch_id in held:
            self._spawn(branch_id)
        timers, self._held_timers = self._held_timers, []
        for timer in timers:
            self._arm(*timer)
        await self._until_done()

    async def end(self, paused: bool, durable: Callable[[], Awaitable[None]] | None) -> None:
        """The run stopped (paused, or over): its last input. With a session, ``durable``
        waits until the log holds it, and only then is it applied (and ``RunCompleted`` or
        ``RunPaused`` emitted): nobody hears of an end a crash could still undo. Not applied
        when storage failed for good meanwhile (the run halted, as a crash would have)."""
        success, error = self.engine.outcome()
        item = inp.RunEnd(at=self.clock.now(), paused=paused, success=success, error=error)
        if self.journal is not None:
            self.journal.record(item, due=True)
        if durable is not None:
            await durable()
        if self.halted is None:
            self._carry_out(self.engine.apply(item))

    def pause(self, reason: str | None) -> list[asyncio.Future[Any]]:
        """Stop at the next step boundary: steps in flight finish (their results are kept),
        no new step starts, open questions are withdrawn (they are asked again on resume).
        Returns the questions being withdrawn: once they are done, the channel has let go of
        them (an answer given after that is refused, not taken and then lost)."""
        self.feed(inp.PauseRequest(at=self.clock.now(), reason=reason), due=False)
        self.pausing = True
        self._pause_requested.set()
        withdrawn = self.questions.withdraw()
        self._maybe_paused(ending=None)
        return withdrawn

    def checkpoint(self, checkpoint_id: str, name: str, position: int) -> None:
        self.feed(
            inp.Checkpoint(
                at=self.clock.now(), checkpoint_id=checkpoint_id, name=name, position=position
            )
        )

    def _maybe_paused(self, ending: asyncio.Task[None] | None) -> None:
        """When pausing and no branch task but ``ending`` (the one finishing now) is working,
        the run has reached its step boundary."""
        busy = any(not t.done() and t is not ending for t in self._tasks.values())
        if self.pausing and not busy and self._done is not None and not self._done.done():
            self._done.set_result(None)

    async def _until_done(self) -> None:
        assert self._done is not None
        try:  # the rule counts each round of a conversation, never the wait for a follow-up
            async with asyncio.timeout(
                None if rounds.waiting(self.engine) else self.run_timeout
            ) as self._run_limit:
                await self._done
        except TimeoutError:
            error = RunTimeoutError(
                "timeout", f"the run exceeded its timeout({self.run_timeout:g}) rule"
            )
            self._abort(error, None)
        finally:
            self._run_limit = None
            if not abandoned(
                self.loop
            ):  # closed unfinished, its loop gone: nothing left to wait for
                await self._shutdown()

    # ---- effects -----------------------------------------------------------------------------

    def _carry_out(self, effects: list[Effect]) -> None:
        for effect in effects:
            handler = _EFFECT_HANDLERS[type(effect)]
            if handler is not None:
                handler(self, effect)

    def _on_spawn(self, effect: Spawn) -> None:
        self._spawn(effect.branch_id)

    def _on_arm_branch(self, effect: ArmBranchTimer) -> None:
        if self.branch_timeout is not None:
            branch_id = effect.branch_id
            self._arm(branch_id, self.branch_timeout, self._branch_timed_out, branch_id)

    def _on_let_go(self, effect: LetGo) -> None:
        self._let_go(self.engine.branches[effect.branch_id])

    def _on_cancel(self, effect: Cancel) -> None:
        self._cancel(effect.branch_id)
        self._let_go(self.engine.branches[effect.branch_id])

    def _on_arm_fan_out(self, effect: ArmConvergenceTimer) -> None:
        if self.convergence_timeout is not None:
            fan_out_id = effect.fan_out_id
            self._arm(fan_out_id, self.convergence_timeout, self._fan_out_timed_out, fan_out_id)

    def _on_disarm(self, effect: Disarm) -> None:
        self._disarm(effect.fan_out_id)

    def _on_round_over(self, effect: RoundOver) -> None:
        """The root waits for a follow-up: no timer runs and no pooled agent is held meanwhile
        (its conversations live in the branch; the next round leases again)."""
        self._disarm(effect.branch_id)
        leases.give_all_back(self.agents, self.engine.branches[effect.branch_id])
        if self._run_limit is not None:
            self._run_limit.reschedule(None)

    def _on_round_begun(self, effect: RoundBegun) -> None:
        self._on_arm_branch(ArmBranchTimer(effect.branch_id))
        if self._run_limit is not None and self.run_timeout is not None:
            self._run_limit.reschedule(asyncio.get_running_loop().time() + self.run_timeout)

    def _on_finished(self, effect: RunFinished) -> None:
        if self._done is not None and not self._done.done():
            self._done.set_result(None)

    def _spawn(self, branch_id: str) -> None:
        if self._held is not None:
            self._held.append(branch_id)
            return
        running = self._tasks.get(branch_id)
        if running is not None and not running.done():
            return
        self._tasks[branch_id] = asyncio.get_running_loop().create_task(
            self._drive(self.engine.branches[branch_id]),
            name=f"orchestra-{self.engine.run_id}-{branch_id}",
        )

    def _cancel(self, branch_id: str) -> None:
        task = self._tasks.get(branch_id)
        if task is not None and not task.done() and task is not asyncio.current_task():
            task.cancel()

    def _let_go(self, branch: Branch) -> None:
        """An ended branch holds nothing: no timer, no pooled agent."""
        self._disarm(branch.id)
        leases.give_all_back(self.agents, branch)

    def _arm(self, key: str, delay: float, callback: Callable[[str], None], target: str) -> None:
        if self._held is not None:
            self._held_timers.append((key, delay, callback, target))
            return
        self._timers[key] = asyncio.get_running_loop().call_later(delay, callback, target)

    def _disarm(self, key: str) -> None:
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()

    def _branch_timed_out(self, branch_id: str) -> None:
        self._timers.pop(branch_id, None)
        branch = self.engine.branches[branch_id]
        if branch.ended or self.engine.finished:
            return
        self.fail_branch(
            branch,
            BranchTimeoutError(
                "branch_timeout",
                f"branch {branch.id} (at {branch.agent!r}) exceeded "
                f"branch_timeout={self.branch_timeout:g}s",
            ),
        )

    def _fan_out_timed_out(self, fan_out_id: str) -> None:
        self._timers.pop(fan_out_id, None)
        if self.engine.fan_outs[fan_out_id].settled or self.engine.finished:
            return
        self.feed(inp.ConvergenceTimeout(at=self.clock.now(), fan_out_id=fan_out_id))

    def fail_branch(self, branch: Branch, error: OrchestraError) -> None:
        self.feed(inp.BranchFailure(at=self.clock.now(), branch_id=branch.id, error=error))

    def _abort(self, error: OrchestraError, branch: Branch | None) -> None:
        item = inp.RunAbort(
            at=self.clock.now(), error=error, branch_id=branch.id if branch else None
        )
        try:
            self.feed(item)
        except Exception:  # the journal itself failed: stop all the same (storage halts it)
            self._carry_out(self.engine.apply(item))

    # ---- driving a branch --------------------------------------------------------------------

    async def _drive(self, branch: Branch) -> None:
        try:
            while self._may_go_on(branch):
                if branch.pending_tools:
                    went_on = await tool_calls.run_pending(self, branch)
                elif branch.question is not None:  # it asked the user and waits for the answer
                    went_on = await self.questions.ask(self, branch)
                elif branch.status is BranchStatus.RUNNING:
                    went_on = await self._one_step(branch)
                    if went_on and turn_over(branch):
                        await asyncio.sleep(0)  # the turn is over: behind the others ready
                else:
                    break
                if not went_on:
                    break
        except asyncio.CancelledError:
            if not branch.ended and not self.pausing:
                raise
        except Exception as error:
            failure = InternalError(
                f"internal error while driving branch {branch.id} at {branch.agent!r}: "
                f"{type(error).__name__}: {error}"
            )
            failure.__cause__ = error
            self._abort(failure, branch)
        finally:
            leases.give_all_back(
                self.agents, branch
            )  # a branch that stops working (waits, ends) lends nothing
            if not abandoned(self.loop):
                current = asyncio.current_task()
                if self._tasks.get(branch.id) is current:
                    del self._tasks[branch.id]
                self._maybe_paused(ending=current)

    def _may_go_on(self, branch: Branch) -> bool:
        return not (self.engine.finished or self.pausing or self.halted is not None or branch.ended)

    async def _one_step(self, branch: Branch) -> bool:
        """Take the branch's next step; False when it had none to take."""
        engine, journal = self.engine, self.journal
        if journal is not None and not await self.gate(branch, journal):
            return False
        agent = await self.agent_for(branch)
        if agent is None:
            return False
        slots = self._slots
        if slots is not None:  # taken before the step begins, so a pause meanwhile stops it
            await slots.acquire()
        try:
            if self.pausing or engine.finished or branch.ended:
                return False
            forked = branch.parent if branch.steps == 0 else None  # said on its first step
            begin = inp.StepBegin(
                at=self.clock.now(),
                branch_id=branch.id,
                agent=branch.agent,
                parent=forked.id if forked is not None else None,
                fan_out=branch.fan_out.id if forked is not None and branch.fan_out else None,
                returns_to=branch.returns_to,
            )
            effects = self.feed(begin, due=False)
            begun = effects[-1] if effects else None  # the engine's last effect: take the step
            if type(begun) is not TakeStep:
                return branch.question is not None  # a spent budget's question to ask
            request = begun.request
            request.report_retry = self._report_retry
            stream = engine.stream
            deltas = listen(stream, engine.run_id, request) if stream.wants_deltas else None
            before = len(request.messages)
            failure: OrchestraError | None = None
            self.steps_in_flight += 1
            started = self.clock.monotonic()
            try:
                if self.step_timeout is None:
                    outcome = await agent.step(request)
                else:
                    outcome = await self._timed_step(branch, agent, request)
            except asyncio.CancelledError:
                if really_cancelled():
                    raise  # only a cancel of the branch's own task stops it
                failure = AgentStepError(f"agent {branch.agent!r} raised CancelledError")
            except (KeyboardInterrupt, SystemExit):
                raise  # the process is to stop: not one step's failure
            except BaseException as error:  # GeneratorExit too: left alone, the run would hang
                if abandoned(self.loop):
                    raise  # closed unfinished, its loop gone: nothing to record
                failure = as_step_error(branch.agent, error)
            finally:
                self.steps_in_flight -= 1
                if deltas is not None:
                    deltas.close()
            duration = self.clock.monotonic() - started
            added = tuple(request.messages[before:])
            if failure is None:
                self._step_done(branch, outcome, added, duration)
            else:
                self._step_failed(branch, failure, added, duration)
            return True
        finally:
            if slots is not None:
                slots.release()

    def _step_done(
        self, branch: Branch, outcome: StepOutcome, added: tuple[Message, ...], duration: float
    ) -> None:
        item = inp.StepResult(
            at=self.clock.now(),
            branch_id=branch.id,
            outcome=as_taken(outcome),
            messages=added,
            duration=duration,
        )
        try:
            self.feed(item)
        except UnstorableValueError as error:
            self._step_failed(
                branch, unstorable_step(branch.agent, branch.id, error), added, duration
            )

    def _step_failed(
        self, branch: Branch, error: OrchestraError, added: tuple[Message, ...], duration: float
    ) -> None:
        """The step failed: recorded with the messages it added to the conversation, or
        without them when they hold what the log cannot store (its error says what)."""
        item = inp.StepError(
            at=self.clock.now(), branch_id=branch.id, error=error, messages=added, duration=duration
        )
        try:
            self.feed(item)
        except UnstorableValueError:
            if not added:
                raise
            self.feed(msgspec.structs.replace(item, messages=()))

    def _report_retry(
        self, branch_id: str, agent: str, attempt: int, delay: float, error: ModelAPIError
    ) -> None:
        error_type = str(error.status) if error.status is not None else type(error).__name__
        item = inp.ModelRetry(
            at=self.clock.now(),
            branch_id=branch_id,
            attempt=attempt,
            delay=delay,
            error=str(error),
            error_type=error_type,
        )
        self.feed(item, due=False)

    async def _timed_step(self, branch: Branch, agent: BaseAgent, request: Any) -> Any:
        def overrun() -> StepTimeoutError:
            return StepTimeoutError(
                "step_timeout",
                f"agent {branch.agent!r} (branch {branch.id}) took longer than "
                f"step_timeout={self.step_timeout:g}s",
            )

        return await within(self.step_timeout, agent.step(request), overrun)

    async def agent_for(self, branch: Branch) -> BaseAgent | None:
        """The agent for the branch's next step; a pooled one is leased while the branch works
        at that node (a lease for any other node is returned first). None when the branch is
        to stop: the run paused while it waited for an instance others hold (maybe another
        session's steps: a pause does not wait for them), or the pool cannot lend (the branch
        fails)."""
        name = branch.agent
        for held in [other for other in branch.leases if other != name]:
            leases.give_back(self.agents, branch, held)
        found = self.agents[name]
        if not isinstance(found, AgentPool):
            return found
        lease = branch.leases.get(name)
        if lease is None:
            if self.pausing:
                return None
            try:
                lease = await leases.lease(found, self._pause_requested)
            except OrchestraError as error:
                self.fail_branch(branch, error)
                return None
            if lease is not None:
                branch.leases[name] = lease
        return lease

    async def gate(self, branch: Branch, journal: Journal, everything: bool = False) -> bool:
        """Before an effect on the world: wait until what it depends on is durable (with
        ``everything``, all recorded so far, whatever the policy: before a question to the
        user). False when, meanwhile, the branch should stop (the run ended, halted or is
        pausing, the branch ended)."""
        wait = journal.flush if everything else journal.gate
        return await self.durable(wait) and self._may_go_on(branch)

    async def durable(self, wait: Callable[[], Awaitable[None]]) -> bool:
        """``wait`` for records to be durable. A storage failure is retried a few times; if it
        persists, or storage refuses the session (another writer) or its setting (an
        OrchestraError: no retry changes those), the run halts as a crash would: nothing more
        happens, and the log keeps every durable step for a resume."""
        for delay in (*STORAGE_RETRY_DELAYS, None):
            try:
                await wait()
                return True
            except Exception as error:
                if delay is None or isinstance(error, OrchestraError):
                    self._halt(error)
                    return False
            await asyncio.sleep(delay)
        return False

    def _halt(self, error: Exception) -> None:
        if self.halted is None:
            self.halted = error
        if self._done is not None and not self._done.done():
            self._done.set_result(None)

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
            leases.give_all_back(self.agents, branch)


STORAGE_RETRY_DELAYS = (0.05, 0.25, 1.0)
"""Seconds between retries of a write that storage failed (a dropped connection, a busy
database) before a durable run gives up and halts."""


_EFFECT_HANDLERS: dict[type, Callable[[Runner, Any], None] | None] = {
    Spawn: Runner._on_spawn,
    ArmBranchTimer: Runner._on_arm_branch,
    LetGo: Runner._on_let_go,
    Cancel: Runner._on_cancel,
    ArmConvergenceTimer: Runner._on_arm_fan_out,
    Disarm: Runner._on_disarm,
    RoundOver: Runner._on_round_over,
    RoundBegun: Runner._on_round_begun,
    RunFinished: Runner._on_finished,
    TakeStep: None,  # the step is run by the caller that began it (_one_step)
}
"""How the runner carries out each kind of effect: one table for every run (a table of bound
methods per runner would be a reference cycle, leaving each finished run to the garbage
collector)."""
