"""Function nodes and tools that workflow files in the tests name by import path."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def shout(text: Any, context: Mapping[str, Any]) -> str:
    return f"{str(text).upper()}!"


def word_count(text: str) -> int:
    """Count the words of a text.

    Args:
        text: the text to count
    """
    return len(text.split())
