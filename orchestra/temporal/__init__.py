"""Sessions as Temporal workflows (the optional extra ``orchestra[temporal]``): workers host
workflows and their agents (``Hosting``, ``worker``); the embedded engine runs inside each
session's workflow; clients submit and follow sessions (``TemporalExecutor``)."""

from .executor import TemporalExecutor
from .hosting import Hosting, version_of
from .protocol import WORKFLOW_NAME, start_input
from .worker import run_worker, worker

__all__ = [
    "WORKFLOW_NAME",
    "Hosting",
    "TemporalExecutor",
    "run_worker",
    "start_input",
    "version_of",
    "worker",
]
