"""A step's reply as it is written: pieces of text from its model call, sent as ``StepDelta``.

This is the runner's (the edge's) business, never the core's: the pieces are news for whoever
listens (the live display, ``Orchestra.stream``), not inputs. Nothing is journaled, stored
with the run's events or replayed, and the step's outcome is the whole reply, exactly as
without streaming.
"""

from __future__ import annotations

from orchestra.agents.contract import StepRequest

from . import events as ev
from .clock import now


class StepDeltas:
    """The ``on_delta`` of one step's request: each piece becomes a ``StepDelta`` until the
    step is over (:meth:`close`): a piece arriving later (from a worker thread a cancelled step
    left generating) is dropped."""

    __slots__ = ("_agent", "_branch_id", "_open", "_run_id", "_step", "_stream")

    def __init__(self, stream: ev.EventStream, run_id: str, request: StepRequest) -> None:
        info = request.info
        self._stream, self._run_id = stream, run_id
        self._branch_id, self._agent, self._step = info.branch_id, info.agent_name, info.step
        self._open = True

    def __call__(self, text: str, attempt: int) -> None:
        if self._open:
            self._stream.emit_delta(
                ev.StepDelta(
                    run_id=self._run_id,
                    at=now(),
                    branch_id=self._branch_id,
                    agent=self._agent,
                    step=self._step,
                    text=text,
                    attempt=attempt,
                )
            )

    def close(self) -> None:
        self._open = False


def listen(stream: ev.EventStream, run_id: str, request: StepRequest) -> StepDeltas:
    """Set ``request.on_delta``: the model streams (called only when someone listens for
    deltas; otherwise the request is left as it is, and the model does not)."""
    deltas = StepDeltas(stream, run_id, request)
    request.on_delta = deltas
    return deltas
