"""Text from a run, made safe to show on a terminal.

A model's reply, a tool's result, an error or a question is data, and may hold anything a model
or a remote service chose to write. A terminal obeys control characters: ``ESC [2J`` clears the
screen, ``ESC ] 52`` writes the clipboard, a carriage return overwrites the line, and
bidirectional overrides make text read differently from what it holds. Everything printed from
a run goes through :func:`printable`, which shows such characters as escapes instead, and
bounds what one piece of text may take (a 4 MB error printed whole floods the terminal).
Where a piece of text sits on one line (a status line, a note in a live block), its line breaks
are shown as escapes too: an error holding ``"\\n[run] run succeeded"`` would otherwise print a
status line no run wrote.
"""

from __future__ import annotations

_KEPT = {ord("\n"), ord("\t")}
_ESCAPES = {
    code: f"\\x{code:02x}" for code in (*range(0x20), 0x7F, *range(0x80, 0xA0)) if code not in _KEPT
}
_ESCAPES.update(
    {code: f"\\u{code:04x}" for code in (*range(0x202A, 0x202F), *range(0x2066, 0x206A))}
)
_ONE_LINE = {
    **_ESCAPES,
    ord("\n"): "\\n",
    **{code: f"\\u{code:04x}" for code in (0x2028, 0x2029)},  # line and paragraph separators
}


def printable(text: str, limit: int | None = None, *, one_line: bool = False) -> str:
    """``text`` with control characters and bidirectional overrides shown as escapes (tabs
    kept, and newlines unless ``one_line``), cut to ``limit`` characters with a note of how
    many more there were."""
    shown = text if limit is None else cut(text, limit)
    return shown.translate(_ONE_LINE if one_line else _ESCAPES)


def cut(text: str, limit: int) -> str:
    """``text``, or its first ``limit`` characters and how many more there were."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text) - limit:,} more characters)"
