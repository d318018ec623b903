"""Every exception Orchestra raises on purpose derives from :class:`OrchestraError`.

Catch ``OrchestraError`` to handle anything Orchestra reports; catch a subclass to handle one
family. Each message names the node, edge, field or session at fault and says what to do.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any


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

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.problems,))

    @property
    def kinds(self) -> set[str]:
        return {p.kind for p in self.problems}

    @classmethod
    def single(cls, kind: str, subject: str, message: str) -> TopologyError:
        return cls([TopologyProblem(kind, subject, message)])


class ConditionError(OrchestraError):
    """An edge condition could not be evaluated; the message names the edge."""


class ConfigurationError(OrchestraError):
    """A configuration value or public API argument cannot be used; the message names it."""


class AgentNotFoundError(OrchestraError):
    """A topology node names an agent that no registry holds when the run starts."""


class ModelError(OrchestraError):
    """A model could not produce a reply (the message names the agent and model)."""


class ScriptExhaustedError(ModelError):
    """A ScriptedModel was asked for more replies than it was given."""


class ModelAPIError(ModelError):
    """A provider's API refused or failed a call.

    ``retryable`` says whether trying again may help (429, 5xx, timeouts, connection errors);
    ``retry_after`` is the provider's requested wait in seconds, when it gave one.
    """

    def __init__(
        self,
        message: str,
        *,
        provider: str,
        model: str,
        status: int | None = None,
        retryable: bool = False,
        retry_after: float | None = None,
    ) -> None:
        self.provider = provider
        self.model = model
        self.status = status
        self.retryable = retryable
        self.retry_after = retry_after
        where = f"{provider} model {model!r}" + (f" (HTTP {status})" if status else "")
        self.detail = message
        super().__init__(f"{where}: {message}")

    def __reduce__(self) -> tuple[Any, ...]:
        keywords = {
            "provider": self.provider,
            "model": self.model,
            "status": self.status,
            "retryable": self.retryable,
            "retry_after": self.retry_after,
        }
        return (_rebuild_model_error, (self.detail, keywords))


class ToolError(OrchestraError):
    """A tool call could not be made or failed; the message names the tool."""


class ActionError(OrchestraError):
    """An agent kept replying with actions it may not take, past the steering retries."""


class LimitExceededError(OrchestraError):
    """A run, branch or step went past one of its limits; ``limit`` names which."""

    def __init__(self, limit: str, message: str) -> None:
        self.limit = limit
        super().__init__(message)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.limit, str(self)))


class StepLimitError(LimitExceededError):
    """The run used up its ``max_steps`` budget."""


class RunTimeoutError(LimitExceededError):
    """The whole run exceeded its ``timeout(...)`` rule."""


class BranchTimeoutError(LimitExceededError):
    """A branch exceeded ``branch_timeout``."""


class StepTimeoutError(LimitExceededError):
    """One agent step exceeded ``step_timeout``."""


class ConvergenceTimeoutError(LimitExceededError):
    """A fan-out's branches did not converge within ``convergence_timeout``."""


class PingPongError(LimitExceededError):
    """Two agents kept handing the same work back and forth (a ``ping_pong(n)`` rule)."""


class BudgetExceededError(LimitExceededError):
    """A run's, branch's or agent's budget was spent and not raised: ``budget`` names its
    scope (``"run"``, ``"branch b2"``, ``"agent 'Writer'"``), ``limit`` the field
    (``"max_tokens"``, ...), ``allowed`` and ``spent`` are the limit and the spend, and
    ``source`` where the limit was set (what to change to go further)."""

    def __init__(
        self, budget: str, limit: str, allowed: float, spent: float, source: str = ""
    ) -> None:
        self.budget = budget
        self.allowed = allowed
        self.spent = spent
        self.source = source
        where = f" {source}" if source else ""
        super().__init__(
            limit,
            f"the {budget} budget's {limit}={budget_amount(limit, allowed)} is spent "
            f"({budget_amount(limit, spent)} used); raise it{where} to go further",
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.budget, self.limit, self.allowed, self.spent, self.source))


def budget_amount(limit: str, value: float) -> str:
    """A budget's amount as a person reads it: whole tokens and steps with thousands
    separators, dollars to at most 4 decimals, seconds to at most 3 (an amount too small for
    them in 3 significant digits)."""
    if limit in ("max_tokens", "max_steps"):
        return f"{int(value):,}" if float(value).is_integer() else f"{value:,}"
    if limit == "max_cost_usd":
        return "$" + _trimmed(value, 4)
    return _trimmed(value, 3) + " s"


def _trimmed(value: float, decimals: int) -> str:
    if 0 < abs(value) < 10**-decimals:
        return f"{value:.3g}"
    return f"{value:,.{decimals}f}".rstrip("0").rstrip(".")


class ConvergenceError(OrchestraError):
    """Too few branches of a fan-out succeeded for its convergence policy."""


class AgentStepError(OrchestraError):
    """An agent's step raised; the message names the agent and the original error."""


class InternalError(OrchestraError):
    """Orchestra itself failed (a bug): the run stops and reports it instead of hanging."""


class UserInputError(OrchestraError):
    """A question to the user could not be answered (no channel, or it timed out)."""


class ToolInDoubtError(ToolError):
    """A non-idempotent tool call started before a crash and has no recorded result: running it
    again might do its work twice, so the branch stops and the user decides."""


class SessionError(OrchestraError):
    """A durable session cannot be used as asked; the message names the session."""


class InvalidSessionIdError(SessionError):
    """A session id that could escape its storage or inject anything is refused."""


class SessionNotFoundError(SessionError):
    """No session (or checkpoint) by that id exists in the storage."""


class SessionCorruptedError(SessionError):
    """A session's log or snapshot is damaged; other sessions are unaffected."""


class SessionFormatError(SessionError):
    """A session was written in a log format this release cannot read or migrate."""


class StorageUnavailableError(SessionError):
    """The server a session is stored on did not answer (down, refusing connections or the
    credentials, the connection lost): transient, unlike the store refusing the call, so it is
    worth trying again; the message names what was being done and the server."""


class SessionRunningError(SessionError):
    """A new run was asked of a session whose run is still going on elsewhere (on Temporal):
    it is followed, not started again; the command line says how to follow it."""


class WorkflowVersionError(SessionError):
    """A Temporal session was started with a workflow (topology and agents' tools) that no
    worker on its task queue hosts now: it is refused, naming the session and the versions,
    instead of being replayed against a changed workflow."""


class UnstorableValueError(SessionError):
    """A value a durable run produced has no stored form (its type has no codec), so it is
    refused where it was produced, before anything is lost; the message names the type."""


class RecordTooLargeError(UnstorableValueError):
    """A record would be larger than a session stores (``records.MAX_RECORD_CHARS``): refused
    before it is written; the message names the session, the record and its largest field."""


def _rebuild_model_error(message: str, keywords: dict[str, Any]) -> ModelAPIError:
    return ModelAPIError(message, **keywords)
