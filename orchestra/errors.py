"""Every exception Orchestra raises on purpose derives from :class:`OrchestraError`.

Catch ``OrchestraError`` to handle anything Orchestra reports; catch a subclass to handle one
family. Each message names the node, edge, field or session at fault and says what to do.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


class OrchestraError(Exception):
    """Base class of every error Orchestra raises deliberately."""


@dataclass(frozen=True)
class TopologyProblem:
    """One thing wrong with a topology.

    ``kind`` is a stable machine-readable tag (``"dangling_edge"``, ``"unreachable_node"``, ...);
    ``subject`` names the node, edge, rule or key at fault, exactly as the user wrote it.
    """

    kind: str
    subject: str
    message: str

    def __str__(self) -> str:
        return self.message


class TopologyError(OrchestraError):
    """A topology could not be parsed or is not a workflow Orchestra can run.

    All problems found are collected into one error, so a user fixes them in one pass;
    ``problems`` lists them individually for programmatic inspection.
    """

    def __init__(self, problems: Iterable[TopologyProblem]) -> None:
        self.problems: tuple[TopologyProblem, ...] = tuple(problems)
        if not self.problems:
            raise ValueError("TopologyError needs at least one problem")
        if len(self.problems) == 1:
            text = f"Invalid topology: {self.problems[0].message}"
        else:
            lines = "\n".join(f"  - {p.message}" for p in self.problems)
            text = f"Invalid topology ({len(self.problems)} problems):\n{lines}"
        super().__init__(text)

    @property
    def kinds(self) -> set[str]:
        return {p.kind for p in self.problems}

    @classmethod
    def single(cls, kind: str, subject: str, message: str) -> TopologyError:
        return cls([TopologyProblem(kind, subject, message)])


class ConditionError(OrchestraError):
    """An edge condition could not be evaluated; the message names the edge."""
