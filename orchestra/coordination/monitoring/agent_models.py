"""Which model an agent's calls go to, as monitoring labels them.

Events carry no model name (the engine does not know what an agent calls), so the metrics and
the traces of a run read it from the run's agents once, when they start watching it.
"""

from __future__ import annotations

from dataclasses import dataclass

from orchestra.agents.agent import Agent
from orchestra.agents.base import BaseAgent
from orchestra.agents.pool import AgentPool


@dataclass(frozen=True, slots=True)
class ModelLabel:
    """A model's name and provider: a ModelConfig's, else the model's class name and its
    top-level package (``ScriptedModel`` of ``orchestra``, a custom model's own package)."""

    name: str
    provider: str


def model_label(agent: BaseAgent | AgentPool) -> ModelLabel | None:
    """The model an agent's calls are labelled with; None for an agent that calls no model
    (code). A pool's instances share one model configuration: its first one's is read."""
    if isinstance(agent, AgentPool):
        agent = agent.instances[0]
    if not isinstance(agent, Agent):
        return None
    model = agent.model
    config = getattr(model, "config", None)
    name, provider = getattr(config, "name", None), getattr(config, "provider", None)
    return ModelLabel(
        name if isinstance(name, str) else type(model).__name__,
        provider if isinstance(provider, str) else type(model).__module__.partition(".")[0],
    )


def model_name(agent: BaseAgent | AgentPool) -> str | None:
    """The name of the model an agent's calls go to (see :func:`model_label`)."""
    label = model_label(agent)
    return None if label is None else label.name
