"""A run that talks to its user, killed (SIGKILL) by the test of question durability.

Usage: python question_crash_workflow.py STATE NOTES SCENARIO {run|resume}

The session is stored in a file backend at STATE with the spec's default
``auto_save_interval=30``, so nothing but a question or an answer makes the log durable
before the kill. Every model call ("call N") and every question put to the user ("asked ID
TEXT") is appended to NOTES, each line prefixed with the mode, for the test to compare.

Scenarios (the run mode kills the process; the resume mode finishes and prints the result):

- ``follow_up``: follow-ups are offered; f1 is answered, the process dies while f2 waits.
- ``question``: the agent asks q1 (answered "Paris"), then q2, and the process dies while q2
  waits.
- ``answered``: as ``question``, but the process dies in the model call right after q1's
  answer was taken in.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any

from orchestra import Agent, AgentRegistry, ExecutionConfig, StatusConfig
from orchestra.communication import CommunicationManager, Question
from orchestra.coordination.orchestra import OrchestraInstance
from orchestra.coordination.state import FileStorageBackend, StateManager
from orchestra.models import FunctionModel, Message, StepInfo

STATE, NOTES, SCENARIO, MODE = sys.argv[1:5]
SESSION = "talk"
ANSWERED = "[The user answered]"
ROUND_OPENERS = ("[Task]", "[Follow-up from the user]")


def note(line: str) -> None:
    with open(NOTES, "a") as handle:
        handle.write(f"{MODE} {line}\n")


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def model(messages: Sequence[Message], info: StepInfo) -> Any:
    """Decides from the conversation alone, so a repeated call decides the same."""
    shown = [message.content for message in messages]
    if SCENARIO == "follow_up":
        rounds = sum(text.startswith(ROUND_OPENERS) for text in shown)
        note(f"call round {rounds}")
        return {"next_action": "final_response", "action_input": {"response": f"answer {rounds}"}}
    answers = sum(text.startswith(ANSWERED) for text in shown)
    note(f"call after {answers} answers")
    if SCENARIO == "answered" and MODE == "run" and answers == 1:
        die()
    if answers < 2:
        question = ("Which city?", "Which day?")[answers]
        return {"next_action": "ask_user", "action_input": {"question": question}}
    return {"next_action": "final_response", "action_input": {"response": "done"}}


class User:
    """Answers f1 and q1 in the run; dies at the question the scenario dies at."""

    async def ask(self, question: Question) -> Any:
        note(f"asked {question.id} {question.response if question.follow_up else question.text}")
        if question.follow_up:
            if MODE == "run" and question.id.endswith(":f2"):
                die()
            return "what about X?" if question.id.endswith(":f1") else None
        if MODE == "run" and question.id.endswith(":q2"):
            die()
        return {"Which city?": "Paris", "Which day?": "Monday"}[question.text]


def instance() -> OrchestraInstance:
    return OrchestraInstance(
        {"nodes": ["User", "Tutor"], "edges": ["User -> Tutor", "Tutor -> User"]},
        agent_registry=AgentRegistry([Agent("Tutor", FunctionModel(model), register=False)]),
        initial_config=ExecutionConfig(status=StatusConfig.from_verbosity(0)),
        communication_manager=CommunicationManager(User()),
        state_manager=StateManager(FileStorageBackend(STATE), auto_save_interval=30),
    )


async def main() -> None:
    orchestra = instance()
    if MODE == "run":
        follow_ups = SCENARIO == "follow_up"
        result = await orchestra.execute(
            "Explain", context={"session_id": SESSION}, allow_follow_ups=follow_ups
        )
    else:
        result = await orchestra.resume_session(SESSION)
    print(
        json.dumps(
            {
                "success": result.success,
                "error": result.error,
                "final": result.final_response,
                "follow_ups": [item.question for item in result.follow_ups],
            }
        )
    )


if __name__ == "__main__":
    asyncio.run(main())
