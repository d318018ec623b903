"""Function nodes that ask the user, for the terminal channel's tests (workflow files name them
by import path)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from orchestra import Action

ASK = "ASK: "


def asker(data: Any, context: Mapping[str, Any]) -> Action:
    """Asks what follows ``ASK: `` in its request; given the answer, ends with it (repr'd, so
    the test sees every line and character of it)."""
    text = str(data)
    if text.startswith(ASK):
        return Action.ask_user(text.removeprefix(ASK))
    return Action.final(f"answer={text!r}")


def hub(data: Any, context: Mapping[str, Any]) -> Action:
    """Sends Left and Right off in parallel to ask the user; ends with what they came back with."""
    if data == "go":
        return Action.invoke_parallel([("Left", f"{ASK}left or right?"), ("Right", f"{ASK}up?")])
    return Action.final(f"hub got {data!r}")


_BOTH_ASK: asyncio.Barrier | None = None


async def _side(name: str, data: Any) -> Action:
    """Left's or Right's step: the two questions are asked together (each side, on the event
    loop, waits for the other before asking), so both exist before the live view's first
    frame without one: the tests of what is on screen then do not depend on timing."""
    global _BOTH_ASK
    text = str(data)
    if text.startswith(ASK):
        _BOTH_ASK = _BOTH_ASK or asyncio.Barrier(2)
        await _BOTH_ASK.wait()
        return Action.ask_user(text.removeprefix(ASK))
    return Action.final(f"{name} heard {text!r}")


async def left(data: Any, context: Mapping[str, Any]) -> Action:
    """Asks its question (with Right's); given the answer, answers the hub with it, named."""
    return await _side("Left", data)


async def right(data: Any, context: Mapping[str, Any]) -> Action:
    """Asks its question (with Left's); given the answer, answers the hub with it, named."""
    return await _side("Right", data)


def tutor(data: Any, context: Mapping[str, Any]) -> Action:
    """Answers each round (the task, then each follow-up) with what it was asked, as it is."""
    return Action.final(f"Tutor on {data}")


LONG = 5_000


def long_tutor(data: Any, context: Mapping[str, Any]) -> Action:
    """Answers each round at length, its last words naming what it was asked."""
    return Action.final(f"START {'x' * LONG} END-OF {data}")
