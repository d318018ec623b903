"""Keeping API keys out of the error text a run records.

A provider, a proxy in front of it or a misconfigured compatible server may repeat the key it
was sent in an error body ("Incorrect API key provided: sk-..."), and the SDK's message may
carry that body; a tool, a step or a condition may put a key into the exception it raises (a
URL with ``&token=...``). Error text goes on into ``result.error``, events, the trace, the
status lines and the durable session log, so it is cleaned once, where it is made: every key
an adapter was built with (given or read from the environment) is replaced by
:data:`REDACTED`, and so are the shapes keys commonly have, which covers keys this process
never saw (another team's key a proxy reports, a key in a ``base_url``).

Shapes are matched strictly enough to leave ordinary text alone: the token after ``Bearer``
and the rest of an ``sk-`` key must look random (long, not made of words), so "Invalid bearer
token provided" and "model sk-learn-regression-v2 not found" are kept as they are.
"""

from __future__ import annotations

import re
from functools import partial
from urllib.parse import urlsplit, urlunsplit

REDACTED = "[REDACTED]"

MIN_KEY_LENGTH = 8
"""Keys shorter than this are not searched for: a short string would be cut out of ordinary
words. Real provider keys are several times longer."""

MIN_BEARER_TOKEN = 16
"""Characters a token after ``Bearer`` has at least; "Bearer token" is prose."""

MIN_SK_KEY = 20
"""Characters after ``sk-`` an OpenAI or Anthropic key has at least (real ones have 48 and
more); ``sk-learn-...`` model names are shorter or made of words."""

_VALUE = r"[^\s\"',;&)}]+"
_TOKEN = r"[A-Za-z0-9._~+/=-]+"
_CREDENTIAL_PARAMETER = (
    r"(?:key|api[_-]?key|x-api-key|(?:access|refresh|id|auth)_token|token|client_secret|secret"
    r"|\w*password|passwd|sig|signature)"
)
"""Query parameters that hold credentials by their name (not ``page_token`` or ``sort_key``,
which hold none); any ``...password`` (PostgreSQL's ``sslpassword``, a client key's
passphrase)."""
_CREDENTIAL_NAME = re.compile(rf"(?i){_CREDENTIAL_PARAMETER}")
_WORD = re.compile(r"[A-Z]?[a-z]+|[A-Z]+|[a-z]?\d{1,3}[a-z]?")

_ALWAYS = (
    # a header that holds nothing but a key, or an authorization with its scheme named:
    # x-api-key: K, "x-api-key": "K", Authorization: Bearer K
    (
        re.compile(
            r"(?i)\b(x-api-key[\"']?\s*[:=]\s*[\"']?"
            rf"|authorization[\"']?\s*[:=]\s*[\"']?(?:bearer|basic|token)\s+){_VALUE}"
        ),
        rf"\1{REDACTED}",
    ),
    # credentials in a URL's query: ?key=K, &access_token=K, &sig=K, &client_secret=K
    (re.compile(rf"(?i)([?&]{_CREDENTIAL_PARAMETER}=)[^&#\s\"'<>]+"), rf"\1{REDACTED}"),
    # a user and password in a URL: scheme://user:password@host (a scheme is short: unbounded,
    # a long run of "sk-sk-..." was tried from each of its words to its end, and 240 KB of it
    # took 73 s)
    (re.compile(r"(?i)\b([a-z][a-z0-9+.-]{0,31}://)[^/\s@:]*:[^/\s@]*@"), rf"\1{REDACTED}@"),
    # keys whose prefix no prose has, however plain their rest: OpenAI's project and service
    # account keys (sk-proj-, sk-svcacct-), GitHub's tokens (ghp_, gho_, ghu_, ghs_, ghr_,
    # github_pat_), AWS access key ids (AKIA, ASIA), Slack's (xoxb-, xoxp-, ...: digits
    # first), Google's API keys (AIza)
    (
        re.compile(
            r"\b(?:sk-(?:proj|svcacct)-[A-Za-z0-9_-]{20,}"
            r"|gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{22,}"
            r"|(?:AKIA|ASIA)[A-Z0-9]{16}\b|xox[abposr]-\d{6,}-[A-Za-z0-9-]{6,}"
            r"|AIza[0-9A-Za-z_-]{35})"
        ),
        REDACTED,
    ),
)
_SHAPED = (
    (re.compile(rf"(?i)\b(bearer\s+)({_TOKEN})"), MIN_BEARER_TOKEN),
    # OpenAI's sk-..., sk-proj-..., Anthropic's sk-ant-...
    (re.compile(r"\b()(sk-[A-Za-z0-9_-]+)"), len("sk-") + MIN_SK_KEY),
    # Hugging Face's hf_... (hf_hub_download_and_cache is a name, not a key)
    (re.compile(r"\b()(hf_[A-Za-z0-9_]+)"), len("hf_") + MIN_SK_KEY),
    # a field named for a key, or an authorization without its scheme: "api_key: field
    # required" and "authorization: denied" are prose, "api_key=9f2c6e0d71ab" is a key
    (
        re.compile(r"(?i)\b((?:api[_-]?key|authorization)[\"']?\s*[:=]\s*[\"']?)([^\s\"',;&)}]+)"),
        MIN_KEY_LENGTH,
    ),
    # a token as a URL's user: https://ghp_0123...@github.com (ssh://git@host is no key)
    (re.compile(r"(?i)\b([a-z][a-z0-9+.-]{0,31}://)([^/\s@:]+)(?=@)"), MIN_BEARER_TOKEN),
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
    for pattern, replacement in _ALWAYS:
        text = pattern.sub(replacement, text)
    for pattern, minimum in _SHAPED:
        text = pattern.sub(partial(_if_key, minimum=minimum), text)
    return text


def _if_key(found: re.Match[str], minimum: int) -> str:
    """The prefix and :data:`REDACTED` when the value after it looks like a key: at least
    ``minimum`` characters, not only words and short numbers ("regression-model-v2")."""
    prefix, value = found.group(1), found.group(2)
    words = all(_WORD.fullmatch(part) for part in re.split(r"[-_.~+/=]+", value) if part)
    return found.group(0) if len(value) < minimum or words else prefix + REDACTED


def url_without_credentials(url: str) -> str:
    """``url`` without its ``user:password@`` and the query parameters named like credentials
    (``key``, ``api_key``, ``access_token``, ``sig``, ``password``, ...): what a dump of a
    ModelConfig keeps, as it keeps no ``api_key``. Removed rather than masked, so a dump read
    back never sends a placeholder as if it were the credential."""
    parts = urlsplit(url)
    query = "&".join(
        pair
        for pair in parts.query.split("&")
        if not _CREDENTIAL_NAME.fullmatch(pair.partition("=")[0])
    )
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2], query=query))
