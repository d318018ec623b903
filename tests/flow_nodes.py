"""Function nodes and tools that workflow files in the tests name by import path."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def shout(text: Any, context: Mapping[str, Any]) -> str:
    return f"{str(text).upper()}!"


def word_count(text: str) -> int:
    """Count the words of a text.

    Args:
        text: the text to count
    """
    return len(text.split())


def intake(data: Any, context: Mapping[str, Any]) -> str:
    return _tally("Intake", data, context)


def publish(data: Any, context: Mapping[str, Any]) -> str:
    return _tally("Publish", data, context)


def _tally(name: str, data: Any, context: Mapping[str, Any]) -> str:
    """Counts the node's steps, one line each, in the file ``context["tally"]``."""
    with open(context["tally"], "a") as steps:
        steps.write(f"{name}\n")
    return f"{data}+{name}"


def die_the_first_time(data: Any, context: Mapping[str, Any]) -> str:
    """Kills its process (SIGKILL: nothing is cleaned up) the first time it runs."""
    marker = Path(context["marker"])
    if not marker.exists():
        marker.touch()
        os.kill(os.getpid(), signal.SIGKILL)
    return f"{data}+Review"


async def interrupt_the_first_time(data: Any, context: Mapping[str, Any]) -> str:
    """Presses Ctrl-C on its own process (SIGINT) the first time it runs, and waits."""
    marker = Path(context["marker"])
    if not marker.exists():
        marker.touch()
        os.kill(os.getpid(), signal.SIGINT)
        await asyncio.sleep(60)  # cancelled: the command line stops the run
    return f"{data}+Review"


async def pause_the_first_time(data: Any, context: Mapping[str, Any]) -> str:
    """Pauses its own session the first time it runs (its step finishes and is kept)."""
    from orchestra.coordination.orchestra import OrchestraInstance

    marker = Path(context["marker"])
    if not marker.exists():
        marker.touch()
        anyone = OrchestraInstance({"nodes": ["Anyone"], "edges": []})
        assert await anyone.pause_session(context["session_id"], "needs a human")
    return f"{data}+Review"


def wait_for_a_line(data: Any, context: Mapping[str, Any]) -> str:
    """Says so on stdout, then waits for a line on stdin: the test decides when it ends."""
    print("waiting for a line", flush=True)
    sys.stdin.readline()
    return f"{data}+Review"


def repeat(text: Any, context: Mapping[str, Any]) -> str:
    """``text`` written ``context["times"]`` times: a response as long as a test needs."""
    return str(text) * int(context["times"])


def sleep_a_minute(data: Any, context: Mapping[str, Any]) -> str:
    """A sync node far slower than any step_timeout the tests give it."""
    time.sleep(60)
    return f"{data}+Slept"


def fail_at_length(data: Any, context: Mapping[str, Any]) -> str:
    """Fails with an error message ``context["length"]`` characters long."""
    raise ValueError("e" * int(context["length"]))
