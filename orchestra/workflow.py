"""Workflow files: agents, topology and execution settings in one YAML (or JSON) document.

```yaml
agents:
  - name: Researcher
    model: openai:gpt-4o-mini            # or {provider: ..., name: ..., base_url: ...}; omitted:
    instruction: Find three facts.       #   the default model (see models/defaults.py)
    tools: [mypackage.tools:search]      # import paths, module:attribute
  - name: Planner
    function: mypackage.nodes:plan       # a FunctionAgent
topology:                                # any topology dict form
  nodes: [User, Planner, Researcher]
  edges: [User -> Planner, Planner <-> Researcher, Planner -> User]
execution: {max_steps: 30, step_timeout: 60}
error_handling: {max_retries: 3}
task: What should we research?           # default for --task
context: {audience: engineers}
```

Every mistake is reported with the file, the line and the field at fault.
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidatorFunctionWrapHandler,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from orchestra.agents import Agent, AgentRegistry, BaseAgent, FunctionAgent
from orchestra.coordination.config import ErrorHandlingConfig, ExecutionConfig
from orchestra.coordination.topology import Topology
from orchestra.errors import ConfigurationError, OrchestraError, TopologyError
from orchestra.models.config import ModelConfig
from orchestra.models.defaults import default_model_config


class WorkflowError(ConfigurationError):
    """A workflow file cannot be used; the message gives file, line and field."""


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AgentSpec(_Spec):
    name: str = Field(min_length=1)
    model: ModelConfig | str | None = None
    instruction: str = ""
    tools: list[str] = Field(default_factory=list)
    function: str | None = None

    @field_validator("model", mode="wrap")
    @classmethod
    def _model_settings(cls, value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        """A setting ModelConfig refuses with a ConfigurationError (a seed for a provider that
        takes none) is reported like any other mistake: with its file, line and field."""
        try:
            return handler(value)
        except ConfigurationError as error:
            raise PydanticCustomError(
                "model_setting", "{message}", {"message": str(error)}
            ) from None

    @model_validator(mode="after")
    def _one_kind(self) -> AgentSpec:
        if self.function and (self.model or self.instruction or self.tools):
            raise ValueError("an agent is either a function or a model agent, not both")
        return self


class WorkflowSpec(_Spec):
    agents: list[AgentSpec] = Field(min_length=1)
    topology: dict[str, Any]
    execution: dict[str, Any] = Field(default_factory=dict)
    error_handling: dict[str, Any] = Field(default_factory=dict)
    task: str | dict[str, Any] | None = None
    context: dict[str, Any] = Field(default_factory=dict)


@dataclass
class Workflow:
    """A loaded workflow, ready for ``Orchestra.run``."""

    registry: AgentRegistry
    topology: Topology
    execution: ExecutionConfig
    error_handling: ErrorHandlingConfig
    max_steps: int
    task: str | dict[str, Any] | None
    context: dict[str, Any] = field(default_factory=dict)


def load_workflow(path: Path, max_tokens: int | None = None) -> Workflow:
    """Read, check and build a workflow file. Raises WorkflowError naming file, line, field."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise WorkflowError(f"cannot read workflow {path}: {error.strerror}") from None
    locate = _Locator(path, text)
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as error:
        raise WorkflowError(
            f"{path}: not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {error}"
        ) from None
    try:
        spec = WorkflowSpec.model_validate(data)
    except ValidationError as error:
        raise WorkflowError(locate.validation(error)) from None
    try:
        topology = Topology.coerce(spec.topology)
        topology.validate()
    except TopologyError as error:
        raise WorkflowError(f"{locate.at(('topology',))}: {error}") from None
    execution = dict(spec.execution)
    max_steps = execution.pop("max_steps", 100)
    try:
        config = ExecutionConfig(**execution)
        errors = ErrorHandlingConfig(**spec.error_handling)
    except ValidationError as error:
        section = "execution" if "ExecutionConfig" in error.title else "error_handling"
        raise WorkflowError(locate.validation(error, prefix=(section,))) from None
    agents = [
        _build_agent(spec, index, agent, locate, max_tokens)
        for index, agent in enumerate(spec.agents)
    ]
    return Workflow(
        registry=AgentRegistry(agents),
        topology=topology,
        execution=config,
        error_handling=errors,
        max_steps=max_steps,
        task=spec.task,
        context=spec.context,
    )


def _build_agent(
    spec: WorkflowSpec, index: int, agent: AgentSpec, locate: _Locator, max_tokens: int | None
) -> BaseAgent:
    where = ("agents", index)
    if agent.function:
        fn = _import(agent.function, locate.at((*where, "function")))
        return FunctionAgent(agent.name, fn, register=False)
    tools = [_import(tool, locate.at((*where, "tools", n))) for n, tool in enumerate(agent.tools)]
    try:
        model = _model_config(agent.model, max_tokens)
        return Agent(agent.name, model, agent.instruction, tools, register=False)
    except (OrchestraError, ValueError, TypeError) as error:
        raise WorkflowError(
            f"{locate.at((*where, 'model'))}: agent {agent.name!r}: {error}"
        ) from None


def _model_config(model: ModelConfig | str | None, max_tokens: int | None) -> ModelConfig:
    if isinstance(model, ModelConfig):
        return model
    if model is None:
        return default_model_config(max_tokens=max_tokens)
    return default_model_config({"ORCHESTRA_MODEL": model}, max_tokens=max_tokens)


def _import(path: str, where: str) -> Any:
    module_name, _, attribute = path.partition(":")
    if not attribute:
        module_name, _, attribute = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError, ValueError) as error:
        raise WorkflowError(f"{where}: cannot import {path!r}: {error}") from None


class _Locator:
    """Maps a field path to ``file:line`` using the YAML node tree (JSON is YAML too)."""

    def __init__(self, path: Path, text: str) -> None:
        self.path = path
        try:
            self.root: Any = yaml.compose(text)
        except yaml.YAMLError:
            self.root = None

    def at(self, location: tuple[Any, ...]) -> str:
        node, line = self.root, 1
        for key in location:
            if isinstance(node, yaml.MappingNode):
                node = next((v for k, v in node.value if k.value == key), None)
            elif (
                isinstance(node, yaml.SequenceNode)
                and isinstance(key, int)
                and key < len(node.value)
            ):
                node = node.value[key]
            else:
                break
            if node is None:
                break
            line = node.start_mark.line + 1
        field_path = ".".join(str(k) if not isinstance(k, int) else f"[{k}]" for k in location)
        return f"{self.path}:{line}: {field_path.replace('.[', '[')}"

    def validation(self, error: ValidationError, prefix: tuple[Any, ...] = ()) -> str:
        lines = [f"{self.at((*prefix, *e['loc']))}: {e['msg']}" for e in error.errors()]
        return "\n".join(lines)
