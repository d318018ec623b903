"""Python functions as tools a model can call: schema from the signature, validated calls.

```python
@tool(timeout=10, idempotent=True)
def search(query: str, limit: int = 5) -> list[str]:
    '''Search the web.

    Args:
        query: what to look for
        limit: how many results
    '''
```

The JSON schema comes from the signature's type hints (through pydantic) and the docstring
(summary and per-argument descriptions). Arguments are validated before the call; a validation
error or an exception is returned to the model as a tool error it can correct. Sync tools run
in a worker thread so they never block the event loop.
"""

from orchestra.models.base import ToolSpec

from .tool import Tool, as_tool, tool

__all__ = ["Tool", "ToolSpec", "as_tool", "tool"]
