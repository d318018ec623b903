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
communication: {user_timeout: 120, on_user_timeout: default, default_answer: "go on"}
task: What should we research?           # default for --task
context: {audience: engineers}
```

Every mistake is reported with the file, the line and the field at fault, before any session
is made. A workflow file is code: ``function`` and ``tools`` name Python that is imported and
run; ``allowed_modules`` (``--allow-module``) limits them for a file from someone else. The
text itself is read within limits (see ``workflow_source``).
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    ValidatorFunctionWrapHandler,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from orchestra.agents import Agent, AgentRegistry, BaseAgent, FunctionAgent
from orchestra.coordination.config import (
    CommunicationConfig,
    ErrorHandlingConfig,
    ExecutionConfig,
)
from orchestra.coordination.state.backends import check_session_id
from orchestra.coordination.topology import Topology
from orchestra.errors import (
    ConfigurationError,
    InvalidSessionIdError,
    OrchestraError,
    TopologyError,
)
from orchestra.models.config import ModelConfig
from orchestra.models.defaults import default_model_config
from orchestra.workflow_source import Locator, WorkflowError, read_source

__all__ = ["Workflow", "WorkflowError", "load_workflow"]


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


# what a file says under ``communication:`` (its channel is the command line's terminal)
_COMMUNICATION_KEYS = ("user_timeout", "on_user_timeout", "default_answer")


class WorkflowSpec(_Spec):
    agents: list[AgentSpec] = Field(min_length=1)
    topology: dict[str, Any]
    execution: dict[str, Any] = Field(default_factory=dict)
    error_handling: dict[str, Any] = Field(default_factory=dict)
    communication: dict[str, Any] = Field(default_factory=dict)
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
    communication: CommunicationConfig = field(default_factory=CommunicationConfig)

    def communication_config(
        self, channel: Any, user_timeout: float | None = None
    ) -> CommunicationConfig:
        """The run's communication config: the file's settings, ``channel``, and
        ``user_timeout`` (the command line's ``--user-timeout``) in place of the file's when
        given, with where the limit that holds was set (its timeout error names it)."""
        settings = self.communication.model_dump(exclude={"channel", "user_timeout_source"})
        if user_timeout is not None:
            settings["user_timeout"] = user_timeout
            source: str | None = "--user-timeout"
        elif self.communication.user_timeout is not None:
            source = f"communication.user_timeout of {self.execution.settings_file}"
        else:
            source = None
        return CommunicationConfig(channel=channel, user_timeout_source=source, **settings)


DEFAULT_MAX_STEPS = 100

WORKFLOW_KEY = "workflow"
"""The topology ``metadata`` key that names a workflow: a file's name without its suffix
unless the file's topology sets it. It tells workflows of one shape apart on Temporal (it is
part of their version: ``orchestra.temporal.version_of``); nothing else reads it."""
_MAX_STEPS: TypeAdapter[int] = TypeAdapter(Annotated[int, Field(strict=True, gt=0)])


def load_workflow(
    path: Path, max_tokens: int | None = None, allowed_modules: Collection[str] | None = None
) -> Workflow:
    """Read, check and build a workflow file. Raises WorkflowError naming file, line, field.

    A workflow file is code: its ``function`` and ``tools`` name Python that is imported and
    run. With ``allowed_modules``, every such name is checked first, and one outside those
    modules (each name allows the module and the modules below it) refuses the whole file
    before anything is imported."""
    allowed = None if allowed_modules is None else _allowed(allowed_modules)
    source = read_source(path)
    locate = source.locate
    source.require_mapping("agents, topology, ...")
    try:
        spec = WorkflowSpec.model_validate(source.data)
    except ValidationError as error:
        raise WorkflowError(locate.validation(error)) from None
    _check_names(spec, locate)
    for where, reference in _references(spec):
        _check_reference(reference, locate.at(where))
    _check_session(spec, locate, untrusted=allowed is not None)
    if allowed is not None:
        _check_no_base_url(spec, locate)
    try:
        topology = Topology.coerce(spec.topology)
        topology.validate()
    except TopologyError as error:
        raise WorkflowError(f"{locate.at(('topology',))}: {error}") from None
    topology.metadata.setdefault(WORKFLOW_KEY, path.stem)
    execution = dict(spec.execution)
    try:
        max_steps = _MAX_STEPS.validate_python(execution.pop("max_steps", DEFAULT_MAX_STEPS))
    except ValidationError as error:
        raise WorkflowError(locate.validation(error, prefix=("execution", "max_steps"))) from None
    try:
        config = ExecutionConfig(**execution).read_from(str(path))
        errors = ErrorHandlingConfig(**spec.error_handling)
    except ValidationError as error:
        section = "execution" if "ExecutionConfig" in error.title else "error_handling"
        raise WorkflowError(locate.validation(error, prefix=(section,))) from None
    communication = _communication(spec, locate)
    if allowed is not None:
        for where, reference in _references(spec):
            _check_allowed(reference, allowed, locate.at(where))
    _check_nodes(spec, topology, locate)
    agents = [
        _build_agent(index, agent, locate, max_tokens) for index, agent in enumerate(spec.agents)
    ]
    return Workflow(
        registry=AgentRegistry(agents),
        topology=topology,
        execution=config,
        error_handling=errors,
        max_steps=max_steps,
        task=spec.task,
        context=spec.context,
        communication=communication,
    )


def _communication(spec: WorkflowSpec, locate: Locator) -> CommunicationConfig:
    """The file's ``communication:`` settings, checked as strictly as ``CommunicationConfig``
    checks them from Python (``true`` or ``"60"`` is no number of seconds); the channel and
    whether there is one are the command line's to choose, not the file's."""
    for key in spec.communication:
        if key not in _COMMUNICATION_KEYS:
            raise WorkflowError(
                f"{locate.at(('communication', key))}: not a setting a workflow file may give "
                f"(it may give {', '.join(_COMMUNICATION_KEYS)}; the command line chooses the "
                "channel)"
            )
    try:
        return CommunicationConfig(**spec.communication)
    except ValidationError as error:
        raise WorkflowError(locate.validation(error, prefix=("communication",))) from None


def _check_names(spec: WorkflowSpec, locate: Locator) -> None:
    """Two agents of one name in a file are a mistake: the later one would silently win."""
    first: dict[str, int] = {}
    for index, agent in enumerate(spec.agents):
        if agent.name in first:
            earlier = locate.at(("agents", first[agent.name], "name"))
            raise WorkflowError(
                f"{locate.at(('agents', index, 'name'))}: agent {agent.name!r} is already "
                f"defined (at {earlier}); each agent needs a name of its own"
            )
        first[agent.name] = index


def _check_session(spec: WorkflowSpec, locate: Locator, untrusted: bool) -> None:
    """A ``session_id`` in the context names the session a run writes into, so it must be a
    safe session id; and a file you do not trust may not choose it (it could pin every run
    into one of your sessions): you pass ``--session`` instead."""
    if "session_id" not in spec.context:
        return
    where = locate.at(("context", "session_id"))
    if untrusted:
        raise WorkflowError(
            f"{where}: a workflow file run with --allow-module may not choose the session it "
            "writes into; remove it and pass --session NAME"
        )
    try:
        check_session_id(spec.context["session_id"])
    except InvalidSessionIdError as error:
        raise WorkflowError(f"{where}: {error}") from None


def _check_no_base_url(spec: WorkflowSpec, locate: Locator) -> None:
    """A file you do not trust may not choose the server a model is reached at: that server
    would receive your API key (OPENAI_API_KEY / ANTHROPIC_API_KEY, sent when the file gives
    none) and everything the run tells the model. Where the file names no server, the key goes
    to its provider's own."""
    for index, agent in enumerate(spec.agents):
        if isinstance(agent.model, ModelConfig) and agent.model.base_url is not None:
            raise WorkflowError(
                f"{locate.at(('agents', index, 'model', 'base_url'))}: a workflow file run with "
                "--allow-module may not set base_url: the server it names would receive your "
                "API key; to use a server of your own, set ORCHESTRA_BASE_URL (and "
                "ORCHESTRA_MODEL) in your environment and leave the agent's model out"
            )


def _check_nodes(spec: WorkflowSpec, topology: Topology, locate: Locator) -> None:
    """The file's agents are all a run from it has: a node none of them fills is its mistake,
    found before any session is made for the run."""
    names = {agent.name for agent in spec.agents}
    missing = [node for node in topology.analyze().agents if node not in names]
    if missing:
        raise WorkflowError(
            f"{locate.at(('topology', 'nodes'))}: no agent in this file for node(s) "
            f"{', '.join(map(repr, missing))} (the agents are {', '.join(sorted(names))})"
        )


def _references(spec: WorkflowSpec) -> Iterator[tuple[tuple[Any, ...], str]]:
    """Every import path the file names, with its field: all a workflow file can import."""
    for index, agent in enumerate(spec.agents):
        if agent.function:
            yield ("agents", index, "function"), agent.function
        for n, tool in enumerate(agent.tools):
            yield ("agents", index, "tools", n), tool


def _build_agent(
    index: int, agent: AgentSpec, locate: Locator, max_tokens: int | None
) -> BaseAgent:
    where = ("agents", index)
    if agent.function:
        at = locate.at((*where, "function"))
        fn = _import(agent.function, at)
        try:
            return FunctionAgent(agent.name, fn, register=False)
        except (OrchestraError, ValueError, TypeError) as error:
            raise WorkflowError(f"{at}: {error}") from None
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


def _module_of(path: str) -> tuple[str, str]:
    """``module:attribute`` or ``module.attribute``, split."""
    module_name, _, attribute = path.partition(":")
    if not attribute:
        module_name, _, attribute = path.rpartition(".")
    return module_name, attribute


_MODULE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


def _allowed(modules: Collection[str]) -> frozenset[str]:
    for name in modules:
        if not _MODULE_NAME.fullmatch(name):
            raise ConfigurationError(f"allowed module {name!r} is not a module name (a.b.c)")
    return frozenset(modules)


def _check_allowed(path: str, allowed: frozenset[str], where: str) -> None:
    """A module is allowed when it, or a package above it, is named: ``pkg`` allows ``pkg``
    and ``pkg.sub``, never ``pkgx``."""
    module_name = _module_of(path)[0]
    parts = module_name.split(".")
    if not any(".".join(parts[:n]) in allowed for n in range(1, len(parts) + 1)):
        raise WorkflowError(
            f"{where}: {path!r} is not in an allowed module ({', '.join(sorted(allowed))}); "
            "nothing was imported"
        )


def _check_reference(path: str, where: str) -> None:
    """An import path names a module and a public attribute of it. A dunder (``pkg:__class__``,
    ``pkg.__builtins__:eval``) reaches past what the module chose to offer, and past the
    allow-list, so none is taken; a package's ``__main__`` module is a module like any other."""
    module_name, attribute = _module_of(path)
    if not _MODULE_NAME.fullmatch(module_name) or not attribute.isidentifier():
        raise WorkflowError(f"{where}: {path!r} is not an import path (module:attribute)")
    modules = [part for part in module_name.split(".") if part != "__main__"]
    dunder = next((part for part in (*modules, attribute) if part.startswith("__")), None)
    if dunder is not None:
        raise WorkflowError(
            f"{where}: {path!r} names {dunder!r}; a reference may not name a dunder attribute "
            "or module, name the function or tool itself"
        )


def _import(path: str, where: str) -> Any:
    """The object at ``path`` (checked by _check_reference), which must be callable. Whatever
    importing the module raises is reported at its field: the module is the workflow's code,
    not Orchestra's."""
    module_name, attribute = _module_of(path)
    try:
        found = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as error:
        raise WorkflowError(f"{where}: cannot import {path!r}: {error}") from None
    except Exception as error:
        raise WorkflowError(
            f"{where}: importing {path!r} failed: {type(error).__name__}: {error}"
        ) from None
    if not callable(found):
        raise WorkflowError(
            f"{where}: {path!r} is a {type(found).__name__}, not a function or a tool"
        )
    return found
