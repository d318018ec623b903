"""How the ``User`` node is reached: channels that answer agents' questions."""

from .channels import CommunicationManager, ProgrammaticChannel, Question, ScriptedUser, UserChannel
from .terminal import TerminalChannel

__all__ = [
    "CommunicationManager",
    "ProgrammaticChannel",
    "Question",
    "ScriptedUser",
    "TerminalChannel",
    "UserChannel",
]
