"""Sessions as Temporal workflows (the optional extra ``orchestra[temporal]``)."""

from .executor import TemporalExecutor
from .protocol import WORKFLOW_NAME

__all__ = ["WORKFLOW_NAME", "TemporalExecutor"]
