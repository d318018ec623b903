"""Run configuration: execution limits, convergence, status output, error handling, user channel.

All configs are pydantic models: a wrong value is rejected at construction with an error that
names the field, and every config serialises to plain data (for logs and durable sessions).

Types are strict (``strict=True`` on every model): a number field takes a number, not the text
of one (``convergence_timeout="300"`` is an error, not 300.0), an integer field takes an
integer (not ``3.0`` or ``True``), a flag takes ``True`` or ``False`` (not ``"yes"`` or ``1``).
An integer is accepted where a float is expected (``convergence_timeout=300``). The few
conversions that are part of the API stay: ``verbosity`` takes a ``VerbosityLevel`` or its
number (0, 1, 2), and ``convergence_policy`` takes whatever ``ConvergencePolicy.coerce``
documents (``"all"``, ``"any"``, a ratio, a mapping).

Stored configs are read back through the same strict validation, with no lax path: a session
keeps ``model_dump(mode="json")`` of its configs and validates it again with ``model_validate``
on resume. That data holds only what strict validation accepts (numbers, booleans, strings,
``None``, nested mappings), except the one enum, which JSON holds as its number, and
``verbosity`` takes its number anyway. So ``model_validate(config.model_dump(mode="json"))``
and ``model_validate_json(config.model_dump_json())`` give back an equal config, and a stored
config cannot hold anything a constructor would have refused (a lax path for stored data, such
as ``model_validate(data, strict=False)``, would let a hand-edited log turn ``"300"`` into 300.0
again, and is not needed). Durations are finite numbers (``None``, not infinity, means no
limit), so JSON can always hold them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from enum import IntEnum
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from orchestra.communication.channels import CommunicationManager


class _Config(BaseModel):
    # strict: see the module's docstring
    model_config = ConfigDict(
        extra="forbid", frozen=True, strict=True, arbitrary_types_allowed=True
    )


class VerbosityLevel(IntEnum):
    """How much a run prints while it works."""

    QUIET = 0
    NORMAL = 1
    VERBOSE = 2


class StatusConfig(_Config):
    """What the run shows while it works, on stderr.

    QUIET shows nothing. On an interactive terminal, NORMAL shows a live view: the branch tree
    with each branch's agent, status, step, working time, tokens and cost (a spinner while a
    model or tool call is in flight) under the run's state and totals; VERBOSE adds, scrolling
    above it, the lines below. Elsewhere (CI, a pipe, a file) NORMAL prints a line per agent
    step and per failure, and when the run pauses, resumes or ends; VERBOSE adds rejected
    replies, retried model calls, fan-outs, convergence and questions. ``show_actions`` (on at
    VERBOSE) adds under each step what its action carried: the requests, the final response,
    the question, the tool calls' arguments; on a terminal at NORMAL it scrolls the step lines
    with them above the live view (see docs/observability.md, "Status display").
    """

    enabled: bool = True
    verbosity: VerbosityLevel = VerbosityLevel.NORMAL
    show_actions: bool = False

    @field_validator("verbosity", mode="before")
    @classmethod
    def _verbosity_level(cls, value: Any) -> VerbosityLevel:
        """A VerbosityLevel, or its number (as written by hand and as JSON stores it); not a
        bool, a float or text."""
        if isinstance(value, VerbosityLevel):
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            with contextlib.suppress(ValueError):
                return VerbosityLevel(value)
        raise ValueError(
            "verbosity must be a VerbosityLevel or 0 (quiet), 1 (normal), 2 (verbose), "
            f"got {value!r}"
        )

    @classmethod
    def from_verbosity(cls, level: int | VerbosityLevel) -> StatusConfig:
        """The settings of one verbosity level; a ValidationError naming ``verbosity`` for
        anything but a VerbosityLevel or 0, 1, 2."""
        verbosity = cls.model_validate({"verbosity": level}).verbosity
        return cls(
            enabled=verbosity > VerbosityLevel.QUIET,
            verbosity=verbosity,
            show_actions=verbosity >= VerbosityLevel.VERBOSE,
        )


class ConvergencePolicy(_Config):
    """When the branches of one fan-out count as converged.

    The waiting agent resumes once ``k`` branches (or ``min_ratio`` of them) have succeeded;
    with neither set, all must succeed. If that becomes impossible (too many failures) or
    ``convergence_timeout`` passes first, ``on_insufficient`` decides: ``"fail"`` fails the
    waiting branch, ``"proceed"`` resumes it on whatever arrived. Failed siblings' results are
    never discarded: they stay in ``branch_results``.
    """

    min_ratio: float | None = Field(default=None, gt=0.0, le=1.0)
    k: int | None = Field(default=None, ge=1)
    on_insufficient: Literal["fail", "proceed"] = "fail"

    @model_validator(mode="after")
    def _one_threshold(self) -> ConvergencePolicy:
        if self.min_ratio is not None and self.k is not None:
            raise ValueError("give min_ratio or k, not both")
        return self

    @classmethod
    def coerce(cls, value: ConvergencePolicyLike) -> ConvergencePolicy:
        """``"all"``, ``"any"``, a ratio in (0, 1], a ConvergencePolicy or its mapping form
        (``{"k": 2, "on_insufficient": "proceed"}``, as written in YAML and node metadata)."""
        if isinstance(value, ConvergencePolicy):
            return value
        if isinstance(value, Mapping):
            return cls.model_validate(dict(value))
        if value == "all":
            return cls()
        if value == "any":
            return cls(k=1)
        if isinstance(value, float | int) and not isinstance(value, bool):
            return cls(min_ratio=float(value))
        raise ValueError(
            f"convergence policy must be 'all', 'any', a ratio in (0, 1] or a "
            f"ConvergencePolicy, got {value!r}"
        )

    def required(self, total: int) -> int:
        """How many of ``total`` branches must succeed."""
        if self.k is not None:
            return min(self.k, total)
        if self.min_ratio is not None:
            return max(1, min(total, -int(-self.min_ratio * total // 1)))
        return total


ConvergencePolicyLike = ConvergencePolicy | Literal["all", "any"] | float | Mapping[str, Any]


class TracingConfig(_Config):
    """OpenTelemetry traces of a run (docs/observability.md, "Tracing").

    ``enabled``: None (default) traces when an OpenTelemetry ``TracerProvider`` is configured
    (set globally, or given here), True always (a provider that records nothing then records
    nothing), False never. ``record_content`` puts the run's task, what agents answered (or
    handed on, or asked), tools' arguments and the messages of errors on the spans (redacted of
    keys, cut when long); True or False decides, None (the default) leaves it to the
    OpenTelemetry variable ``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT`` (``true``: on;
    else off). ``tracer_provider`` sends this run's spans to a provider of its own (an object
    with a ``get_tracer`` method) instead of the global one; it is an object, not a setting, so
    a session's log does not keep it (a resumed run traces to the global provider).
    """

    enabled: bool | None = None
    record_content: bool | None = None
    tracer_provider: Any = Field(default=None, exclude=True)

    @field_validator("tracer_provider")
    @classmethod
    def _a_provider(cls, value: Any) -> Any:
        if value is not None and not callable(getattr(value, "get_tracer", None)):
            raise ValueError(
                f"must be an OpenTelemetry TracerProvider (with a get_tracer method), got "
                f"{type(value).__name__}"
            )
        return value

    @classmethod
    def coerce(cls, value: TracingConfig | bool | Mapping[str, Any]) -> TracingConfig:
        """A TracingConfig, True/False for one that is on or off, or its mapping form (as a
        session stores it)."""
        if isinstance(value, TracingConfig):
            return value
        if isinstance(value, bool):
            return cls(enabled=value)
        if isinstance(value, Mapping):
            return cls.model_validate(dict(value))
        raise ValueError(f"tracing must be a TracingConfig, True or False, got {value!r}")


class Budget(_Config):
    """How much a run, a branch or an agent may spend (docs/engine.md, "Budgets"): tokens
    (prompt and completion), cost in US dollars (as the models report it), agent steps and
    working time in seconds (paused time excluded). ``None`` means no limit; a step begins only
    while every limit set is above what was spent."""

    max_tokens: int | None = Field(default=None, ge=1)
    max_cost_usd: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    max_steps: int | None = Field(default=None, ge=1)
    max_duration: float | None = Field(default=None, gt=0, allow_inf_nan=False)

    @model_validator(mode="after")
    def _some_limit(self) -> Budget:
        if self.limits() == {}:
            raise ValueError(
                "a budget needs at least one of max_tokens, max_cost_usd, max_steps, max_duration"
            )
        return self

    def limits(self) -> dict[str, float]:
        """The limits set, by field name."""
        return {name: value for name, value in self if value is not None}


class ExecutionConfig(_Config):
    """Limits and behaviour of one run.

    Timeouts are in seconds and ``None`` means no limit:

    * ``step_timeout`` bounds one agent step (one model call or one function-agent run), and
      each tool call;
    * ``branch_timeout`` bounds one branch, from its creation to its end;
    * ``convergence_timeout`` bounds how long a fan-out waits for its branches.

    ``steering_mode`` decides when the engine injects guidance into an agent's conversation:
    ``"auto"`` after an invalid reply, ``"always"`` also before every step (helps small
    models), ``"never"`` not at all (the first invalid reply fails the branch).
    ``max_steering_retries`` bounds the corrective retries for one step.
    ``dynamic_convergence_enabled`` (default) makes parallel branches that reach a
    convergence point of their fan-out stop there, so the point runs once on all of them;
    when False, every branch runs through the point on its own.
    ``tracing`` (a :class:`TracingConfig`, or True/False) says whether the run is traced.
    Budgets (:class:`Budget`) bound what is spent: ``budget`` by the whole run,
    ``branch_budget`` by each branch, ``agent_budgets`` by each agent named (over the run).
    :attr:`settings_file` is the workflow file these settings were read from (set by
    :func:`~orchestra.workflow.load_workflow`, see :meth:`read_from`): an error about a limit
    set there names the file's key to change, not this class's field.
    """

    convergence_timeout: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    branch_timeout: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    step_timeout: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    convergence_policy: ConvergencePolicy = Field(default_factory=ConvergencePolicy)
    dynamic_convergence_enabled: bool = True
    steering_mode: Literal["auto", "always", "never"] = "auto"
    max_steering_retries: int = Field(default=3, ge=0)
    status: StatusConfig = Field(default_factory=StatusConfig)
    tracing: TracingConfig = Field(default_factory=TracingConfig)
    budget: Budget | None = None
    branch_budget: Budget | None = None
    agent_budgets: dict[str, Budget] = Field(default_factory=dict)
    # not a field: no way to set it but reading a file, and never stored in a session's log
    # (an absolute path is private, and a moved file made it stale on resume)
    _settings_file: str | None = PrivateAttr(default=None)

    @model_validator(mode="before")
    @classmethod
    def _stored_before(cls, data: Any, info: ValidationInfo) -> Any:
        """A session log written before the file's name was kept out of it stores it in the
        run's config: read there (only), it is dropped."""
        stored = isinstance(info.context, dict) and info.context.get("stored") is True
        if stored and isinstance(data, dict) and "settings_file" in data:
            return {key: value for key, value in data.items() if key != "settings_file"}
        return data

    @property
    def settings_file(self) -> str | None:
        """The workflow file these settings were read from (None: set in Python)."""
        return self._settings_file

    def read_from(self, settings_file: str | None) -> ExecutionConfig:
        """These settings, as read from ``settings_file`` (a limit's error names its key)."""
        copy = self.model_copy()
        copy._settings_file = settings_file
        return copy

    @field_validator("convergence_policy", mode="before")
    @classmethod
    def _coerce_policy(cls, value: Any) -> ConvergencePolicy:
        return ConvergencePolicy.coerce(value)

    @field_validator("tracing", mode="before")
    @classmethod
    def _coerce_tracing(cls, value: Any) -> TracingConfig:
        return TracingConfig.coerce(value)


class ErrorHandlingConfig(_Config):
    """How failures are handled.

    ``enable_error_routing``: when an agent's step fails (its model or function raises), and
    the agent has outgoing edges to other agents, the failure is routed to them as an error
    report instead of failing the branch (the spec's error-recovery pattern). With
    ``preserve_error_context`` the report includes the error type, message and the input the
    agent was working on. Retries of model calls (added with the provider adapters) are
    configured here too: up to ``max_retries`` of them, after waits growing exponentially from
    ``retry_initial_delay`` seconds. ``retry_max_delay`` caps every wait (a ``Retry-After``
    included), so a cap below the initial delay is allowed rather than refused: it then bounds
    the first wait too (``0``: retry at once).
    """

    enable_error_routing: bool = False
    preserve_error_context: bool = True
    max_retries: int = Field(default=3, ge=0)
    retry_initial_delay: float = Field(default=0.5, ge=0, allow_inf_nan=False)
    retry_max_delay: float = Field(default=30.0, ge=0, allow_inf_nan=False)


class CommunicationConfig(_Config):
    """How the ``User`` node is reached.

    ``channel`` answers ``ask_user`` questions and follow-up offers. With none, ``terminal``
    says whether the run asks on the terminal when the process has one (standard input, and
    standard error or output, are terminals: :func:`~orchestra.communication.user_channel`);
    ``terminal=False`` means no user at all, whatever the process runs on (a server, a batch
    job, a test run with ``pytest -s``): an agent's question fails its branch and follow-ups
    are not offered. ``user_timeout`` bounds how long a branch waits for an answer (a channel's
    own ``user_timeout`` attribute, such as :class:`TerminalChannel`'s, takes its place).
    ``on_user_timeout`` says what an unanswered question does: ``"fail"`` fails the asking
    branch with a :class:`UserInputError` naming the question and the time limit;
    ``"default"`` answers it with ``default_answer``, in words that tell the agent the user
    did not answer. Either outcome is journaled, so a resumed or replayed run decides the same.
    ``user_timeout_source`` says where ``user_timeout`` was set, in the words of whoever set it
    (``"--user-timeout"``, ``"communication.user_timeout of flow.yaml"``), for the error of a
    question that ran out of time; None names this class's field.
    """

    channel: Any = None
    terminal: bool = True
    user_timeout: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    on_user_timeout: Literal["fail", "default"] = "fail"
    default_answer: str = ""
    user_timeout_source: str | None = None

    def manager(self, channel: Any = None) -> CommunicationManager:
        """What a run asks through: ``channel`` (None: this config's own), with this config's
        time limit and what an unanswered question does (one place that turns the settings
        into the manager, for ``Orchestra.run``, the command line and the web inspector)."""
        return CommunicationManager(
            channel if channel is not None else self.channel,
            self.user_timeout,
            on_user_timeout=self.on_user_timeout,
            default_answer=self.default_answer,
            user_timeout_source=self.user_timeout_source,
        )
