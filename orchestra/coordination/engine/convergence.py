"""Fan-outs and convergence: starting parallel branches, when they count as done, and what
the waiting side receives.

The transitions (``fan_out``, ``arrive``, ``child_ended``, ``settle``) are functions of the
:class:`~orchestra.coordination.engine.core.Engine` they change; the rest are pure helpers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from orchestra.agents.contract import InputKind, Invocation, StepInput
from orchestra.coordination.config import ConvergencePolicy
from orchestra.coordination.topology import TopologyAnalysis
from orchestra.errors import (
    ConfigurationError,
    ConvergenceError,
    ConvergenceTimeoutError,
    OrchestraError,
)

from . import events as ev
from . import lifecycle
from .branches import Branch, BranchStatus, FanOut, Frame
from .effects import ArmConvergenceTimer

if TYPE_CHECKING:
    from .core import Engine

_NO_SOURCES: frozenset[str] = frozenset()


def fan_out(
    engine: Engine,
    parent: Branch,
    source: str,
    sources: frozenset[str],
    items: list[tuple[str, StepInput, bool]],
) -> None:
    """Start a branch per item (target, input, whether it is a call) and make ``parent`` wait."""
    calls = any(item[2] for item in items)
    policy = engine.policy(source, calls)
    started = FanOut(
        id=f"f{len(engine.fan_outs) + 1}",
        parent=parent,
        source=source,
        sources=sources,
        children=[],
        policy=policy,
        required=policy.required(len(items)),
        pending=len(items),
        created_at=engine.now,
        calls=calls,
    )
    engine.fan_outs[started.id] = started
    parent.status = BranchStatus.WAITING
    parent.waiting_on = started
    for target, step_input, is_call in items:
        stack = [Frame(source, returns_to_fan_out=True)] if is_call else None
        child = lifecycle.new_branch(engine, target, step_input, started, parent, stack)
        engine.invocations[target] += 1
        started.children.append(child)
    engine.stream.emit(
        ev.FanOutStarted(
            run_id=engine.run_id,
            at=engine.now,
            fan_out_id=started.id,
            branch_id=parent.id,
            source=source,
            child_branch_ids=tuple(child.id for child in started.children),
            targets=tuple(item[0] for item in items),
        )
    )
    engine.effects.append(ArmConvergenceTimer(started.id))


def arrives(engine: Engine, branch: Branch, invocations: tuple[Invocation, ...]) -> bool:
    """Whether handing to these targets means reaching a convergence point of the branch's own
    fan-out (so the branch stops there and waits for its siblings)."""
    own = branch.fan_out
    if own is None or branch.call_stack or not engine.config.dynamic_convergence_enabled:
        return False
    points = engine.analysis.convergence_points
    return all(points.get(item.agent_name, _NO_SOURCES) & own.sources for item in invocations)


def arrive(engine: Engine, branch: Branch, invocations: tuple[Invocation, ...]) -> None:
    branch.arrivals = {item.agent_name: item.request for item in invocations}
    assert branch.fan_out is not None
    engine.stream.emit(
        ev.BranchArrived(
            run_id=engine.run_id,
            at=engine.now,
            branch_id=branch.id,
            fan_out_id=branch.fan_out.id,
            nodes=tuple(branch.arrivals),
        )
    )
    lifecycle.end(engine, branch, BranchStatus.ARRIVED, "arrived", invocations[0].request)


def child_ended(engine: Engine, child: Branch) -> None:
    own = child.fan_out
    assert own is not None
    if own.settled:
        return
    own.pending -= 1
    if child.status is BranchStatus.FAILED:
        own.failed += 1
    else:
        own.succeeded += 1
    settle(engine, own, timed_out=False)


def settle(engine: Engine, settling: FanOut, timed_out: bool) -> None:
    """Once the fan-out's outcome is decided: cancel what is no longer needed and hand what
    the branches produced to where they meet (or fail the waiting branch)."""
    outcome = settle_outcome(settling, timed_out)
    if outcome is None:
        return
    lifecycle.mark_settled(engine, settling)
    cancelled = 0
    for child in settling.children:
        if not child.ended:
            lifecycle.cancel(engine, child)
            cancelled += 1
    by_node, items = collect_results(settling)
    parent = settling.parent
    resumes_at: tuple[str, ...] = ()
    if outcome != "failed":
        resumes_at = tuple(by_node) or ((parent.agent,) if settling.calls else ())
    engine.stream.emit(
        ev.ConvergenceReached(
            run_id=engine.run_id,
            at=engine.now,
            fan_out_id=settling.id,
            branch_id=parent.id,
            succeeded=settling.succeeded,
            failed=settling.failed,
            cancelled=cancelled,
            outcome=outcome,
            resumes_at=resumes_at,
        )
    )
    if parent.ended:
        return
    parent.waiting_on = None
    if outcome == "failed":
        timeout = engine.config.convergence_timeout if timed_out else None
        lifecycle.fail(engine, parent, convergence_error(settling, items, timeout))
        return
    parent.status = BranchStatus.RUNNING
    _deliver(engine, settling, parent, by_node, items)
    if parent.status is BranchStatus.RUNNING:
        lifecycle.spawn(engine, parent)


def _deliver(
    engine: Engine,
    settled: FanOut,
    parent: Branch,
    by_node: dict[str, list[dict[str, Any]]],
    items: list[dict[str, Any]],
) -> None:
    """The converged results go on: to the convergence point(s) they reached, or back to the
    agent that called the branches (or, when nobody waits for them, they are its answer)."""
    deliveries = tuple(Invocation(node, node_items) for node, node_items in by_node.items())
    if deliveries and arrives(engine, parent, deliveries):
        parent.forwards_results = True  # its siblings' receiver gets these items, not a list
        arrive(engine, parent, deliveries)  # the nodes are convergence points of its own fan-out
        return
    source = settled.source
    if len(deliveries) > 1:
        fan_out(
            engine,
            parent,
            source,
            settled.sources | {child.agent for child in settled.children},
            [
                (item.agent_name, StepInput(InputKind.RESULTS, item.request, source), False)
                for item in deliveries
            ],
        )
    elif deliveries:
        node, node_items = deliveries[0].agent_name, deliveries[0].request
        lifecycle.enter(engine, parent, node, StepInput(InputKind.RESULTS, node_items, source))
    elif settled.calls:
        parent.input = StepInput(InputKind.RESULTS, items, source)
    else:
        lifecycle.answer(engine, parent, items)


def policy_for(
    analysis: TopologyAnalysis, source: str, calls: bool, default: ConvergencePolicy
) -> ConvergencePolicy:
    """The policy of a fan-out from ``source``: the ``convergence_policy`` in the metadata of
    the node where its branches meet.

    Called branches meet where they answer, at the source itself; handed-off branches meet at
    the convergence points this source feeds. Without one, the run's
    ``ExecutionConfig.convergence_policy`` applies.
    """
    candidates = (
        [source]
        if calls
        else [node for node, sources in analysis.convergence_points.items() if source in sources]
    )
    for node in candidates:
        if not analysis.has_node(node):
            continue  # the User source of a topology that has no User node
        value = analysis.node(node).metadata.get("convergence_policy")
        if value is not None:
            return ConvergencePolicy.coerce(value)
    return default


def settle_outcome(fan_out: FanOut, timed_out: bool) -> str | None:
    """``"met"``, ``"proceed"``, ``"failed"``, or None while the outcome can still change."""
    if fan_out.succeeded >= fan_out.required:
        return "met"
    impossible = fan_out.succeeded + fan_out.pending < fan_out.required
    if not (timed_out or impossible):
        return None
    if fan_out.policy.on_insufficient == "proceed":
        return "proceed" if timed_out or fan_out.pending == 0 else None
    return "failed"


def collect_results(
    fan_out: FanOut,
) -> tuple[dict[str, list[dict[str, Any]]], list[dict[str, Any]]]:
    """What the branches produced, each item labelled by agent and branch.

    Returns the items per convergence node (for branches that arrived at one) and all items.
    A convergence node also receives every item that did not arrive (failures with their
    error, answers of branches that ended elsewhere), so nothing a sibling did is lost;
    cancelled branches are left out.
    """
    by_node: dict[str, list[dict[str, Any]]] = {}
    items: list[dict[str, Any]] = []
    elsewhere: list[dict[str, Any]] = []
    for child in fan_out.children:
        status = child.status
        if status is BranchStatus.CANCELLED:
            continue
        if status is BranchStatus.FAILED:
            item = {
                "agent": child.agent,
                "branch_id": child.id,
                "status": "failed",
                "error": str(child.error),
            }
            elsewhere.append(item)
            items.append(item)
            continue
        if status is BranchStatus.ARRIVED:
            for node, payload in child.arrivals.items():
                received = by_node.setdefault(node, [])
                if child.forwards_results:
                    received.extend(payload)  # a nested fan-out's items meet here as peers
                else:
                    received.append(_success(child.agent, child.id, payload))
        else:
            elsewhere.append(_success(child.agent, child.id, child.result))
        items.append(_success(child.agent, child.id, child.result))
    for node_items in by_node.values():
        node_items.extend(elsewhere)
    return by_node, items


def _success(agent: str, branch_id: str, response: Any) -> dict[str, Any]:
    return {"agent": agent, "branch_id": branch_id, "status": "completed", "response": response}


def convergence_error(
    fan_out: FanOut, items: list[dict[str, Any]], timeout: float | None
) -> OrchestraError:
    """The error of a fan-out that could not converge; ``timeout`` set when it timed out."""
    failures = "; ".join(
        f"{item['branch_id']} ({item['agent']}): {item['error']}"
        for item in items
        if item["status"] == "failed"
    )
    summary = (
        f"the fan-out from {fan_out.source!r} ({fan_out.id}) had {fan_out.succeeded} of "
        f"{len(fan_out.children)} branches succeed, {fan_out.required} required"
    )
    if failures:
        summary += f"; failures: {failures}"
    if timeout is not None:
        return ConvergenceTimeoutError(
            "convergence_timeout", f"{summary}; convergence_timeout={timeout}s passed"
        )
    return ConvergenceError(summary)


def check_node_policies(analysis: TopologyAnalysis) -> None:
    """Reject a node whose ``convergence_policy`` metadata is not a policy, naming the node."""
    for name in analysis.agents:
        value = analysis.node(name).metadata.get("convergence_policy")
        if value is None:
            continue
        try:
            ConvergencePolicy.coerce(value)
        except ValueError as error:
            raise ConfigurationError(f"node {name!r}: convergence_policy: {error}") from None
