"""What a failed step is recorded as: the error a step raised, made safe for the log and the
events (an API key in its text redacted), and why an outcome the log cannot store is refused."""

from __future__ import annotations

from orchestra.errors import (
    AgentStepError,
    OrchestraError,
    RecordTooLargeError,
    UnstorableValueError,
)
from orchestra.models.secrets import redact


def as_step_error(agent: str, error: BaseException) -> OrchestraError:
    """What a step that raised failed with: Orchestra's own errors as they are; any other's text
    with the API keys it carries redacted (it goes into the log, the events and the result)."""
    if isinstance(error, OrchestraError):
        return error
    failure = AgentStepError(redact(f"agent {agent!r} raised {type(error).__name__}: {error}"))
    failure.__cause__ = error
    return failure


def unstorable_step(
    agent: str, branch_id: str, error: UnstorableValueError
) -> UnstorableValueError:
    """Why a step whose outcome the log cannot hold is refused, and what to do about it (said
    by the runner, or by a Temporal step activity, whose outcome crosses as the log stores it)."""
    if isinstance(error, RecordTooLargeError):
        return RecordTooLargeError(
            f"agent {agent!r} (branch {branch_id}) returned too much to store, so the "
            f"step is refused: {error}"
        )
    return UnstorableValueError(
        f"agent {agent!r} (branch {branch_id}) returned {error}; the session log "
        "cannot store it, so the step is refused. Return JSON-compatible data, or "
        "register the type: orchestra.coordination.state.register_type(...)"
    )
