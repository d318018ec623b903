"""What an agent may do at a step, whether its action is allowed, and where code-routed values go.

Pure functions of the topology analysis and the branch: no I/O, no clocks.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from orchestra.agents.contract import Action, ActionKind, Invocation, timeout_problem
from orchestra.coordination.topology import USER, Labeled, TopologyAnalysis
from orchestra.coordination.topology.conditions import condition_holds
from orchestra.errors import ActionError
from orchestra.models.base import PeerInfo, ToolSpec


@dataclass(slots=True, frozen=True)
class Permissions:
    """What one agent may do in one situation (cached per agent and ``can_finish``)."""

    actions: tuple[str, ...]
    peers: tuple[PeerInfo, ...]
    parallel_groups: tuple[tuple[str, ...], ...]
    can_finish: bool
    can_ask_user: bool
    tools: tuple[ToolSpec, ...]
    tool_names: frozenset[str]
    peer_names: frozenset[str]

    def menu(self) -> str:
        """A one-line reminder of the allowed actions, for steering messages."""
        parts = []
        if self.peers:
            parts.append(f"invoke_agent with one of: {', '.join(p.name for p in self.peers)}")
        if self.can_finish:
            parts.append("final_response")
        if self.can_ask_user:
            parts.append("ask_user")
        if self.tools:
            parts.append(f"call_tool with one of: {', '.join(t.name for t in self.tools)}")
        return "; ".join(parts) or "nothing (this agent has no way to continue)"


def permissions(
    analysis: TopologyAnalysis,
    agent: str,
    can_finish: bool,
    tools: tuple[ToolSpec, ...],
    caller: str | None,
) -> Permissions:
    """What ``agent`` may do. The agent that is waiting for its answer (``caller``) is not a
    peer: a callee answers it with a final response rather than calling it back."""
    peers = tuple(
        PeerInfo(
            name=edge.target,
            is_call=analysis.is_call(agent, edge.target),
            label=edge.condition if isinstance(edge.condition, str) else None,
        )
        for edge in analysis.out_edges(agent)
        if edge.target != USER and edge.target != caller
    )
    names = {peer.name for peer in peers}
    groups = tuple(
        shared
        for group in analysis.parallel_groups
        if len(shared := tuple(name for name in group if name in names)) > 1
    )
    can_ask = analysis.talks_to_user(agent)
    actions = [ActionKind.INVOKE.value] if peers else []
    if can_finish:
        actions.append(ActionKind.FINAL.value)
    if can_ask:
        actions.append(ActionKind.ASK_USER.value)
    if tools:
        actions.append(ActionKind.CALL_TOOL.value)
    return Permissions(
        tuple(actions),
        peers,
        groups,
        can_finish,
        can_ask,
        tools,
        frozenset(t.name for t in tools),
        frozenset(names),
    )


def action_problem(
    analysis: TopologyAnalysis,
    agent: str,
    action: Action,
    allowed: Permissions,
    context: Mapping[str, Any],
    decided_by_model: bool,
) -> str | None:
    """Why ``agent`` may not take ``action`` now, or None when it may.

    Parallel rules bind model decisions only: code (a function agent) may fan out over any
    edges it has. A predicate condition that raises propagates as ConditionError.
    """
    kind = action.kind
    if kind is ActionKind.INVOKE and not action.invocations:
        return "invoke_agent needs at least one invocation"
    if kind is ActionKind.CALL_TOOL and not action.tool_calls:
        return "call_tool needs at least one tool call"
    unknown = [call.name for call in action.tool_calls if call.name not in allowed.tool_names]
    if unknown:
        return f"{agent} has no tool {', '.join(map(repr, unknown))}"
    if kind is ActionKind.INVOKE:
        return _invocation_problem(analysis, agent, action, allowed, context, decided_by_model)
    if kind is ActionKind.FINAL and not allowed.can_finish:
        return (
            f"{agent} cannot give the final response here (it is not an exit and nobody "
            "called it); hand the work on instead"
        )
    if kind is ActionKind.ASK_USER and not allowed.can_ask_user:
        return f"{agent} may not ask the user: the topology has no edge '{agent} -> User'"
    if kind is ActionKind.ASK_USER:
        return timeout_problem(action.timeout)
    return None


def _invocation_problem(
    analysis: TopologyAnalysis,
    agent: str,
    action: Action,
    allowed: Permissions,
    context: Mapping[str, Any],
    decided_by_model: bool,
) -> str | None:
    for item in action.invocations:
        target = item.agent_name
        if target == USER:
            return "the user is not invoked: use final_response to answer or ask_user to ask"
        edge = analysis.edge(agent, target)
        if edge is None:
            known = "is not an agent" if not analysis.has_node(target) else "is not your peer"
            return f"{target!r} {known}; {agent} may invoke only its peers"
        if target not in allowed.peer_names:
            return f"{target!r} is waiting for your answer: reply with final_response instead"
        if not condition_holds(edge.condition, item.payload(), context, edge.arrow):
            if isinstance(edge.condition, str):
                return f'invoking {target!r} needs "label": "{edge.condition}" in the item'
            return f"the condition on edge '{edge.arrow}' does not hold for this request"
    targets = set(action.targets)
    if (
        len(action.invocations) > 1
        and decided_by_model
        and not _parallel_allowed(analysis, targets)
    ):
        groups = "; ".join(", ".join(g) for g in allowed.parallel_groups) or "none"
        return (
            f"{', '.join(sorted(targets))} may not be invoked together (parallel groups you "
            f"may use: {groups}); invoke one agent at a time"
        )
    return None


def _parallel_allowed(analysis: TopologyAnalysis, targets: set[str]) -> bool:
    if len(targets) == 1:
        return any(next(iter(targets)) in group for group in analysis.parallel_groups)
    return analysis.may_invoke_in_parallel(targets)


def route_value(
    analysis: TopologyAnalysis, agent: str, value: Any, in_call: bool, context: Mapping[str, Any]
) -> Action | None:
    """Where a function agent's plain return value goes, or None when it can go nowhere.

    Called agents answer their caller. Otherwise the value follows every outgoing edge whose
    condition holds (one: hand-off or call; several: parallel); with none, an exit finishes.
    """
    if in_call:
        return Action.final(_unwrap(value))
    request = _unwrap(value)
    targets = [
        Invocation(edge.target, request)
        for edge in analysis.out_edges(agent)
        if edge.target != USER and condition_holds(edge.condition, value, context, edge.arrow)
    ]
    if targets:
        return Action(ActionKind.INVOKE, invocations=tuple(targets))
    if analysis.is_exit(agent):
        return Action.final(request)
    return None


def _unwrap(value: Any) -> Any:
    return value.value if isinstance(value, Labeled) else value


def error_route(analysis: TopologyAnalysis, agent: str) -> str | None:
    """Where a failed step's error report goes: an ``on_error`` edge, else the only peer."""
    peers = [edge for edge in analysis.out_edges(agent) if edge.target != USER]
    marked = [edge.target for edge in peers if edge.metadata.get("on_error")]
    if marked:
        return marked[0]
    return peers[0].target if len(peers) == 1 else None


def no_route_error(analysis: TopologyAnalysis, agent: str, value: Any) -> ActionError:
    edges = [edge.arrow for edge in analysis.out_edges(agent) if edge.target != USER]
    return ActionError(
        f"function agent {agent!r} returned {str(value)[:200]!r}, which none of its edges "
        f"({', '.join(edges) or 'none'}) accepts, and {agent!r} is not an exit; return "
        "Labeled(value, <label>) or an Action"
    )
