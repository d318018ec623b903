"""Keeping API keys out of the error text an adapter reports.

A provider, a proxy in front of it or a misconfigured compatible server may repeat the key it
was sent in an error body ("Incorrect API key provided: sk-..."), and the SDK's message may
carry that body. An adapter's error text goes on into ``result.error``, events, the trace, the
status lines and the durable session log, so it is cleaned once, where it is made: every key
an adapter was built with (given or read from the environment) is replaced by
:data:`REDACTED`, and so are the shapes keys commonly have, which covers keys this process
never saw (another team's key a proxy reports, a key in a ``base_url``).
"""

from __future__ import annotations

import re

REDACTED = "[REDACTED]"

MIN_KEY_LENGTH = 8
"""Keys shorter than this are not searched for: a short string would be cut out of ordinary
words. Real provider keys are several times longer."""

_VALUE = r"[^\s\"',;&)}]+"
_PATTERNS = (
    # the header or field that holds a key, with its scheme kept: x-api-key: K, "api_key": "K",
    # Authorization: Bearer K
    (
        re.compile(
            r"(?i)\b(x-api-key|api[_-]?key|authorization)"
            rf"([\"']?\s*[:=]\s*[\"']?)((?:bearer|basic|token)\s+)?{_VALUE}"
        ),
        rf"\1\2\3{REDACTED}",
    ),
    (re.compile(rf"(?i)\b(bearer\s+){_VALUE}"), rf"\1{REDACTED}"),
    # OpenAI's sk-..., sk-proj-..., Anthropic's sk-ant-...
    (re.compile(r"\bsk-[A-Za-z0-9_-]{8,}"), REDACTED),
    # credentials in a URL: scheme://user:password@host
    (re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s@]+@"), rf"\1{REDACTED}@"),
)

_known: set[str] = set()


def remember(key: str) -> None:
    """Have :func:`redact` hide ``key`` from now on (as given, and without the whitespace a
    key read from a file often ends with)."""
    for form in (key, key.strip()):
        if len(form) >= MIN_KEY_LENGTH:
            _known.add(form)


def redact(text: str) -> str:
    """``text`` with every remembered key and every key-shaped string replaced by
    :data:`REDACTED`. Longer keys first, so a key that contains another goes whole."""
    for key in sorted(tuple(_known), key=len, reverse=True):
        text = text.replace(key, REDACTED)
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text
