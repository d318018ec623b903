"""The runner's journal: each engine input recorded in the session's log before it is applied.

The runner hands every input to :meth:`Journal.record` and then to the engine; replay
(:mod:`.replay`) applies the same inputs, read back from the log, to a fresh engine.
"""

from __future__ import annotations

from orchestra.coordination.engine.inputs import Record

from .manager import SessionWriter


class Journal:
    """Records one run's inputs through the session's writer. ``run`` names the run durably
    in the session log (:attr:`RunLog.name`): its questions' ids hold it."""

    def __init__(self, writer: SessionWriter, run: str) -> None:
        self.writer = writer
        self.run = run

    def record(self, item: Record, due: bool) -> None:
        """Record an input; a due one must be durable before the run's next effect on the
        world (see ``gate``), and its write starts now. A step's beginning and a model retry
        are not due by themselves: they travel with the next record that is."""
        self.writer.record(item)
        if due:
            self.writer.commit()

    async def gate(self) -> None:
        """Wait, before an effect on the world (a model call, a tool, a question), until the
        records it depends on are durable ('every step' policy; otherwise returns at once)."""
        if self.writer.unsettled:
            await self.writer.settled()

    async def flush(self) -> None:
        """Everything recorded so far is durable (whatever the policy) when this returns: before
        the user is asked anything, and once an answer is taken in, since a person's answer,
        and the work the question stands on, must never be lost to a crash."""
        await self.writer.flush()
