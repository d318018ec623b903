"""Names and payload shapes shared by the client and the workflow (provisional: the client's
view of the contract, until the workflow's side lands)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

WORKFLOW_NAME = "orchestra.session"
RECORDS_QUERY = "records"
QUESTIONS_QUERY = "questions"
ANSWER_UPDATE = "answer"
PAUSE_SIGNAL = "pause"
RESUME_SIGNAL = "resume"
VERSION_ERROR = "WorkflowVersionError"


@dataclass
class StartInput:
    """What a session's workflow is started with."""

    version: str
    fingerprint: list[str]
    header: str
    communication: dict[str, Any]
    heartbeat_timeout: float
