"""The process's limit on open files, which a thousand sessions running at once can pass.

A running session holds a descriptor in the embedded backends (SQLite: its writer lock; files:
its open segment). Past the usual soft limit of 1024, the choice is between failing, reopening
on every append, or raising the soft limit to the hard one, which any process may do: the
backends raise it, once in the process's life, and log it (as the JVM does by default).
"""

from __future__ import annotations

import logging
import threading

try:
    import resource
except ImportError:  # not POSIX: no limit to raise
    resource = None  # type: ignore[assignment]

UNLIMITED_TARGET = 65536  # the soft limit raised to where the hard one is unlimited
_RAISED = threading.Event()  # the soft limit was raised (or tried) once


def soft_limit() -> int | None:
    """The soft limit on open files; None where there is none (or no way to know it)."""
    if resource is None:
        return None
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return None if soft == resource.RLIM_INFINITY else soft


def soft_limit_raised() -> bool:
    """Whether :func:`raise_soft_limit` was called in this process (it acts once)."""
    return _RAISED.is_set()


def raise_soft_limit(why: str, log: logging.Logger, held: str) -> bool:
    """Raise the soft limit on open files to the hard one (:data:`UNLIMITED_TARGET` where that
    is unlimited), once in the process's life; whether it was raised now. Logged, with ``why``
    and what each running session holds (``held``), as child processes started from then on
    inherit the raised limit."""
    if resource is None or _RAISED.is_set():
        return False
    _RAISED.set()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = UNLIMITED_TARGET if hard == resource.RLIM_INFINITY else hard
    if soft == resource.RLIM_INFINITY or soft >= target:
        return False
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (OSError, ValueError):  # the system allows less (macOS: OPEN_MAX)
        return False
    log.info(
        "raised the soft limit on open files from %d to %d, as %s (each running session holds "
        "one for %s); child processes started from now on inherit it: raise `ulimit -n` "
        "before starting to avoid this",
        soft,
        target,
        why,
        held,
    )
    return True
