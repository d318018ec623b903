"""The status display's name for :mod:`orchestra.text` (safe terminal text), which lives at the
package's root so that the user channels, below the coordination layer, show questions with it
too."""

from orchestra.text import cut, printable

__all__ = ["cut", "printable"]
