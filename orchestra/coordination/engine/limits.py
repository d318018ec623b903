"""Run limits that need per-branch memory: ping-pong detection."""

from __future__ import annotations

from collections import deque
from typing import Any

from orchestra.errors import PingPongError

from .branches import Branch


def record_transfer(
    branch: Branch, rounds: int, source: str, target: str, payload: Any
) -> PingPongError | None:
    """Note that work moved ``source -> target``; the error when that completes ``rounds``
    identical round trips between the same two agents, else None.

    Only the last ``2 * rounds`` transfers are kept, so the check is O(rounds) per transfer.
    """
    if branch.transfers is None:
        branch.transfers = deque(maxlen=2 * rounds)
    transfers = branch.transfers
    transfers.append((source, target, _fingerprint(payload)))
    if len(transfers) < 2 * rounds:
        return None
    first, second = transfers[0], transfers[1]
    if first[0] != second[1] or first[1] != second[0]:
        return None
    if all(transfers[i] == (first if i % 2 == 0 else second) for i in range(2 * rounds)):
        return PingPongError(
            "ping_pong",
            f"{first[0]!r} and {first[1]!r} handed the same work back and forth {rounds} "
            f"times with no progress (rule ping_pong({rounds}))",
        )
    return None


def _fingerprint(payload: Any) -> str:
    """What must repeat exactly for a round trip to count as no progress: the payload's repr
    (hashes collide, e.g. ``hash(-1) == hash(-2)``)."""
    return repr(payload)
