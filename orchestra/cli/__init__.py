"""The ``orchestra`` command line (``orchestra.cli:app``)."""

from .commands import app

__all__ = ["app"]
