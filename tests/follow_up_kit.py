"""What the follow-up tests share: two topologies and a model that counts its rounds."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from helpers import final

from orchestra.coordination.config import CommunicationConfig
from orchestra.models import Message, StepInfo

SOLO = {"nodes": ["User", "Tutor"], "edges": ["User -> Tutor", "Tutor -> User"]}
TWO_ENTRIES = {
    "nodes": ["User", "Tech", "Finance"],
    "edges": ["User -> Tech", "User -> Finance", "Tech -> User", "Finance -> User"],
}


def channel_of(user: Any) -> CommunicationConfig:
    return CommunicationConfig(channel=user)


class Tutor:
    """A model that answers each round with its number (counted in the conversation it is
    shown, so a resumed run's model answers as the live one's did), and keeps what it saw."""

    def __init__(self) -> None:
        self.seen: list[list[str]] = []

    def __call__(self, messages: Sequence[Message], info: StepInfo) -> Any:
        shown = [message.content for message in messages]
        self.seen.append(shown)
        rounds = sum(text.startswith(("[Task]", "[Follow-up from the user]")) for text in shown)
        return final(f"answer {rounds}")
