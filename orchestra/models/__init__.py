"""Models: the interface, usage accounting, and the offline test models."""

from .base import Message, Model, ModelReply, PeerInfo, StepInfo, Usage
from .testing import FunctionModel, RecordedCall, ScriptedModel

__all__ = [
    "FunctionModel",
    "Message",
    "Model",
    "ModelReply",
    "PeerInfo",
    "RecordedCall",
    "ScriptedModel",
    "StepInfo",
    "Usage",
]
