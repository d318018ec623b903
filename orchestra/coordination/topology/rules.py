"""Topology rules: limits and permissions that travel with a topology.

Rules are written as text in topology dicts (``"max_steps(20)"``) or given as objects
(``MaxSteps(20)``); text is parsed into the same objects, and unknown text is an error.
The engine enforces them; this module only defines and parses them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

from pydantic import ValidationError

from orchestra.coordination.config import Budget
from orchestra.errors import TopologyError

from .model import check_name


@dataclass(frozen=True)
class Rule:
    """Base class of all topology rules."""

    keyword: ClassVar[str]

    def to_text(self) -> str:
        raise NotImplementedError

    def __str__(self) -> str:
        return self.to_text()


@dataclass(frozen=True)
class MaxSteps(Rule):
    """The run may take at most ``steps`` agent steps in total, over all branches."""

    steps: int
    keyword: ClassVar[str] = "max_steps"

    def __post_init__(self) -> None:
        _require_positive_int(self.keyword, self.steps)

    def to_text(self) -> str:
        return f"max_steps({self.steps})"


@dataclass(frozen=True)
class Timeout(Rule):
    """The whole run must finish within ``seconds`` of wall time."""

    seconds: float
    keyword: ClassVar[str] = "timeout"

    def __post_init__(self) -> None:
        if isinstance(self.seconds, bool) or not isinstance(self.seconds, int | float):
            raise _rule_error(
                self.keyword, f"timeout needs a number of seconds, got {self.seconds!r}"
            )
        if not 0 < self.seconds < math.inf:
            raise _rule_error(
                self.keyword, f"timeout must be positive and finite, got {self.seconds!r}"
            )

    def to_text(self) -> str:
        seconds = self.seconds
        return f"timeout({int(seconds) if float(seconds).is_integer() else repr(float(seconds))})"


@dataclass(frozen=True)
class MaxAgents(Rule):
    """At most ``agents`` agent steps may be running at the same moment."""

    agents: int
    keyword: ClassVar[str] = "max_agents"

    def __post_init__(self) -> None:
        _require_positive_int(self.keyword, self.agents)

    def to_text(self) -> str:
        return f"max_agents({self.agents})"


@dataclass(frozen=True)
class Parallel(Rule):
    """These agents may be invoked together, as parallel branches, by one action.

    Parallel invocation is opt-in: an agent may name several peers in one ``invoke_agent``
    only when a ``parallel(...)`` rule lists all of them. Code-routed fan-out (a function node
    whose conditions hold on several edges) needs no rule: its author wrote those edges.
    """

    agents: tuple[str, ...]
    keyword: ClassVar[str] = "parallel"

    def __post_init__(self) -> None:
        if isinstance(self.agents, str):
            raise _rule_error(
                self.keyword, f"Parallel needs a sequence of agent names, got {self.agents!r}"
            )
        agents = tuple(self.agents)
        object.__setattr__(self, "agents", agents)
        for agent in agents:
            check_name(agent, "parallel rule")
        if len(agents) < 2:
            raise _rule_error(
                self.keyword, f"parallel(...) needs at least two agents, got {agents}"
            )
        duplicates = sorted({a for a in agents if agents.count(a) > 1})
        if duplicates:
            raise _rule_error(self.keyword, f"parallel(...) lists {', '.join(duplicates)} twice")

    def to_text(self) -> str:
        return f"parallel({', '.join(self.agents)})"


@dataclass(frozen=True)
class PingPong(Rule):
    """Stop a branch where two agents hand the same work back and forth ``rounds`` times.

    A round is one hand-over from A to B and one back from B to A. Rounds only count while
    nothing changes: the same two requests, word for word, each time. A Writer and a Critic
    exchanging new drafts are making progress and are never stopped by this rule.
    """

    rounds: int
    keyword: ClassVar[str] = "ping_pong"

    def __post_init__(self) -> None:
        _require_positive_int(self.keyword, self.rounds)

    def to_text(self) -> str:
        return f"ping_pong({self.rounds})"


@dataclass(frozen=True)
class BudgetRule(Rule):
    """What the run (``scope`` ``run``), each branch (``branch``) or one agent (its name) may
    spend: ``budget(Writer, max_tokens=2000, max_cost_usd=0.5)`` (see :class:`Budget`)."""

    scope: str
    limits: tuple[tuple[str, float], ...]
    keyword: ClassVar[str] = "budget"

    def __post_init__(self) -> None:
        if self.scope not in ("run", "branch"):
            check_name(self.scope, "budget rule")
        object.__setattr__(self, "limits", tuple(self.limits))
        self.budget()

    def budget(self) -> Budget:
        """The rule's limits as a Budget (a TopologyError naming the field for a bad one)."""
        try:
            return Budget.model_validate(dict(self.limits))
        except ValidationError as error:
            problem = error.errors()[0]
            where = ".".join(str(part) for part in problem["loc"]) or "limits"
            raise _rule_error(
                self.keyword, f"budget({self.scope}, ...): {where}: {problem['msg']}"
            ) from None

    def to_text(self) -> str:
        limits = ", ".join(f"{name}={value!r}" for name, value in self.limits)
        return f"budget({self.scope}, {limits})"


def _budget(args: list[str], text: str) -> BudgetRule:
    if len(args) < 2:
        raise _rule_error(text, f"rule {text!r}: budget(scope, field=limit, ...) needs both")
    limits: list[tuple[str, float]] = []
    for arg in args[1:]:
        name, equals, value = arg.partition("=")
        if not equals:
            raise _rule_error(text, f"rule {text!r}: {arg!r} is not field=limit")
        number = _integer(value, text) if value.strip().isdigit() else _number(value, text)
        limits.append((name.strip(), number))
    return BudgetRule(args[0], tuple(limits))


_RULE_TEXT = re.compile(r"^\s*(\w+)\s*\((.*)\)\s*$", re.DOTALL)


def _rule_error(subject: str, message: str) -> TopologyError:
    return TopologyError.single("invalid_rule", subject, message)


def _require_positive_int(keyword: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _rule_error(keyword, f"{keyword} needs a positive whole number, got {value!r}")


def _number(text: str, rule: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise _rule_error(rule, f"rule {rule!r}: {text!r} is not a number") from None


def _integer(text: str, rule: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise _rule_error(rule, f"rule {rule!r}: {text!r} is not a whole number") from None


def _single_argument(args: list[str], rule: str) -> str:
    if len(args) != 1:
        raise _rule_error(rule, f"rule {rule!r} takes exactly one argument")
    return args[0]


_PARSERS: dict[str, Callable[[list[str], str], Rule]] = {
    "max_steps": lambda args, text: MaxSteps(_integer(_single_argument(args, text), text)),
    "timeout": lambda args, text: Timeout(_number(_single_argument(args, text), text)),
    "max_agents": lambda args, text: MaxAgents(_integer(_single_argument(args, text), text)),
    "parallel": lambda args, text: Parallel(tuple(args)),
    "ping_pong": lambda args, text: PingPong(_integer(_single_argument(args, text), text)),
    "budget": _budget,
}
RULE_KEYWORDS = tuple(_PARSERS)


def parse_rule(text: str) -> Rule:
    """Parse rule text such as ``"parallel(A, B)"``; anything unknown is a TopologyError quoting it."""
    match = _RULE_TEXT.match(text)
    known = ", ".join(f"{k}(...)" for k in RULE_KEYWORDS)
    if not match:
        raise _rule_error(text, f"cannot parse rule {text!r}; rules look like {known}")
    keyword, raw_args = match.group(1), match.group(2)
    parser = _PARSERS.get(keyword)
    if parser is None:
        raise _rule_error(text, f"unknown rule {text!r}; known rules: {known}")
    args = [arg.strip().strip("'\"") for arg in raw_args.split(",")] if raw_args.strip() else []
    try:
        return parser(args, text)
    except TopologyError as error:
        detail = error.problems[0].message
        raise _rule_error(text, detail if text in detail else f"rule {text!r}: {detail}") from None


def coerce_rule(rule: object) -> Rule:
    if isinstance(rule, Rule):
        return rule
    if isinstance(rule, str):
        return parse_rule(rule)
    raise _rule_error(repr(rule), f"a rule is a Rule object or rule text, got {rule!r}")
