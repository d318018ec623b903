"""Running a branch's pending tool calls, for the runner: each call journaled as it starts
and as it returns, a call already journaled never run twice.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import msgspec

from orchestra.agents.base import BaseAgent
from orchestra.agents.pool import AgentPool
from orchestra.errors import ToolError, ToolInDoubtError, UnstorableValueError
from orchestra.models.base import ToolCall
from orchestra.models.secrets import redact

from . import inputs as inp
from .branches import Branch
from .clock import within
from .questions import abandoned, really_cancelled

if TYPE_CHECKING:
    from .runner import Runner


async def run_pending(runner: Runner, branch: Branch) -> bool:
    """Run the branch's pending calls, then let it go on; False when it stopped meanwhile (a
    call in doubt, storage halted the run, a pause came while it waited for a pooled agent)."""
    pooled = runner.agents[branch.agent]
    agent = branch.leases.get(branch.agent) if isinstance(pooled, AgentPool) else pooled
    if agent is None:
        agent = await runner.agent_for(branch)
    if agent is None or not await _run_all(runner, branch, agent):
        return False
    runner.feed(inp.ToolsDone(at=runner.clock.now(), branch_id=branch.id))
    return True


async def _run_all(runner: Runner, branch: Branch, agent: BaseAgent) -> bool:
    """Run the calls (concurrently); False when the branch stopped (a call in doubt) or
    storage halted the run. A call whose result the run has (a resumed run replayed it) is not
    run again, and one that started without a result is run again only if its tool is
    idempotent; otherwise the branch fails as in doubt."""
    known = branch.tool_results
    for call in branch.pending_tools:
        started = call.call_id in known and known[call.call_id] is None
        if started and not agent.is_idempotent(call.name):
            runner.fail_branch(branch, _in_doubt(branch, call))
            return False
    calls = [call for call in branch.pending_tools if known.get(call.call_id) is None]
    done = await asyncio.gather(*(_run_one(runner, branch, agent, call) for call in calls))
    return all(done)


async def _run_one(runner: Runner, branch: Branch, agent: BaseAgent, call: ToolCall) -> bool:
    runner.feed(
        inp.ToolStart(
            at=runner.clock.now(), branch_id=branch.id, call_id=call.call_id, name=call.name
        )
    )
    journal = runner.journal
    if journal is not None:
        # whatever the policy, a non-idempotent tool's start must be durable first: a lost
        # start record would let it run twice
        wait = journal.gate if agent.is_idempotent(call.name) else journal.flush
        if not await runner.durable(wait):
            return False
    started = runner.clock.monotonic()
    try:
        result, ok = await _call(runner, agent, call), True
    except (KeyboardInterrupt, SystemExit, asyncio.CancelledError):
        raise  # the process is to stop, or the branch's task is cancelled (see _call)
    except ToolInDoubtError:  # its attempt was lost (a Temporal worker died running it)
        runner.fail_branch(branch, _in_doubt(branch, call))
        return False
    except BaseException as error:  # GeneratorExit too: left alone, the run would hang
        if abandoned(runner.loop):
            raise  # closed unfinished, its loop gone: nothing to record
        result, ok = failure_text(error), False
    item = inp.ToolResult(
        at=runner.clock.now(),
        branch_id=branch.id,
        call_id=call.call_id,
        name=call.name,
        ok=ok,
        result=result,
        duration=runner.clock.monotonic() - started,
    )
    try:
        runner.feed(item)
    except UnstorableValueError as error:
        refused = f"the tool returned {error}, which the session log cannot store"
        runner.feed(msgspec.structs.replace(item, ok=False, result=refused))
    return True


async def _call(runner: Runner, agent: BaseAgent, call: ToolCall) -> Any:
    """The tool's result, within ``step_timeout`` too (a tool's own ``timeout`` may be shorter).
    A CancelledError the tool raised itself, not a cancel of this task, is its failure: let
    through, it would end the branch's task and leave the run waiting for it forever."""

    def overrun() -> ToolError:
        return ToolError(
            f"tool {call.name!r} (agent {agent.name!r}) took longer than "
            f"step_timeout={runner.step_timeout:g}s"
        )

    try:
        return await within(runner.step_timeout, agent.call_tool(call), overrun)
    except asyncio.CancelledError:
        if really_cancelled():
            raise
        raise ToolError(
            f"tool {call.name!r} (agent {agent.name!r}) raised CancelledError"
        ) from None


class ToolFailed(Exception):
    """A tool's failure reported from where it ran (a Temporal worker): ``text`` is what
    :func:`failure_text` made of it there."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


def failure_text(error: BaseException) -> str:
    """What a tool's failure is recorded as: its type and message, any API key it carries
    redacted."""
    if isinstance(error, ToolFailed):
        return error.text
    return redact(f"{type(error).__name__}: {error}")


def _in_doubt(branch: Branch, call: ToolCall) -> ToolInDoubtError:
    return ToolInDoubtError(
        f"tool {call.name!r} with arguments {dict(call.arguments)!r} (branch {branch.id}, call "
        f"{call.call_id}) started before the run stopped and has no recorded result; it is not "
        "idempotent, so it is not run again. Check its effect, then continue the workflow "
        "yourself"
    )
