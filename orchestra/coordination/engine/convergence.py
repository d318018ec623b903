"""Convergence: when a fan-out's branches count as done, and what the waiting side receives."""

from __future__ import annotations

from typing import Any

from orchestra.coordination.config import ConvergencePolicy
from orchestra.coordination.topology import TopologyAnalysis
from orchestra.errors import (
    ConfigurationError,
    ConvergenceError,
    ConvergenceTimeoutError,
    OrchestraError,
)

from .state import BranchStatus, FanOut


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
