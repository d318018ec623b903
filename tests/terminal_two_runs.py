"""Two runs in one process on one terminal, for the terminal channel's live-view test
(``python -m terminal_two_runs SIGNAL``): run 'asker' asks its question on the terminal; run
'other' ends once the file ``SIGNAL`` can be read (a FIFO the test writes to when it has seen
the prompt), while that question still waits. Each run's result is printed when it returns."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

from helpers import fn

from orchestra import (
    Action,
    AgentRegistry,
    CommunicationConfig,
    ExecutionConfig,
    Orchestra,
    TerminalChannel,
)
from orchestra.coordination.config import StatusConfig

LIVE = ExecutionConfig(status=StatusConfig.from_verbosity(1))


def asker(data: Any, context: Any) -> Action:
    if data == "go":
        return Action.ask_user("What is your name?")
    return Action.final(f"answer={data!r}")


async def main(signal: Path) -> None:
    async def other(data: Any, context: Any) -> str:
        await asyncio.to_thread(signal.read_text)
        return "other's work"

    asking = asyncio.create_task(
        Orchestra.run(
            "go",
            {"nodes": ["Asker", "User"], "edges": ["Asker -> User"]},
            agent_registry=AgentRegistry([fn("Asker", asker)]),
            context={"session_id": "asker"},
            execution_config=LIVE,
            communication_config=CommunicationConfig(channel=TerminalChannel()),
        )
    )
    result = await Orchestra.run(
        "x",
        {"nodes": ["Other"], "edges": []},
        agent_registry=AgentRegistry([fn("Other", other)]),
        context={"session_id": "other"},
        execution_config=LIVE,
    )
    print(f"OTHER RETURNED {result.final_response!r}", file=sys.stderr, flush=True)
    asked = await asking
    print(f"ASKER RETURNED {asked.final_response!r}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1])))
