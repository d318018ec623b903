"""Models: the interface, usage accounting, and the offline test models."""

from .base import Message, Model, ModelReply, PeerInfo, StepInfo, ToolCall, ToolSpec, Usage
from .config import ModelConfig
from .testing import FunctionModel, RecordedCall, ScriptedModel

__all__ = [
    "FunctionModel",
    "Message",
    "Model",
    "ModelConfig",
    "ModelReply",
    "PeerInfo",
    "RecordedCall",
    "ScriptedModel",
    "StepInfo",
    "ToolCall",
    "ToolSpec",
    "Usage",
]
