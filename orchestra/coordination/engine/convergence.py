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
    analysis: TopologyAnalysis, source: str, default: ConvergencePolicy
) -> ConvergencePolicy:
    """The policy of a fan-out from ``source``.

    The ``convergence_policy`` in the metadata of the node where the branches meet wins: a
    convergence point fed by this source, else the source itself (where branches that were
    called answer back). Without one, the run's ``ExecutionConfig.convergence_policy`` applies.
    """
    candidates = [
        node for node, sources in analysis.convergence_points.items() if source in sources
    ] + [source]
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
) -> tuple[dict[str, list[dict[str, Any]]], list[dict[str, Any]], bool]:
    """What the branches produced, each item labelled by agent and branch.

    Returns the items per convergence node (for branches that arrived at one), all items,
    and whether any branch answered back to the fan-out's source. Failed branches are
    reported to every receiver with their error; cancelled ones are left out.
    """
    by_node: dict[str, list[dict[str, Any]]] = {}
    items: list[dict[str, Any]] = []
    failures: list[dict[str, Any]] = []
    returned = False
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
            failures.append(item)
            items.append(item)
            continue
        if status is BranchStatus.ARRIVED:
            for node, payload in child.arrivals.items():
                by_node.setdefault(node, []).append(_success(child.agent, child.id, payload))
        returned = returned or child.outcome == "returned"
        items.append(_success(child.agent, child.id, child.result))
    for node_items in by_node.values():
        node_items.extend(failures)
    return by_node, items, returned


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
