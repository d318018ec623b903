"""A run's budget limits, read once from its config and its topology's ``budget(...)`` rules,
with where each was set (what a :class:`~orchestra.errors.BudgetExceededError` tells the user
to change). What is spent against them, and what a spent one does, is
:mod:`~orchestra.coordination.engine.budgets`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from orchestra.coordination.config import Budget, ExecutionConfig
from orchestra.coordination.topology import BudgetRule, Rule
from orchestra.errors import ConfigurationError


@dataclass(frozen=True, slots=True)
class Limits:
    """A run's budgets as (field, limit) pairs, by scope: read once from its config (its
    topology's ``budget(...)`` rules already in it), with where each limit was set, by
    (budget, field) (``"branch"`` stands for every branch's): what its error tells the user
    to change."""

    run: tuple[tuple[str, float], ...]
    branch: tuple[tuple[str, float], ...]
    agents: dict[str, tuple[tuple[str, float], ...]]
    sources: dict[tuple[str, str], str]

    @classmethod
    def of(
        cls, config: ExecutionConfig, rules: Iterable[BudgetRule], settings_file: str | None = None
    ) -> Limits:
        """``settings_file``: the workflow file the config was read from, if any."""
        agents = {name: _pairs(budget) for name, budget in config.agent_budgets.items()}
        sources = _sources(config, rules, settings_file)
        return cls(_pairs(config.budget), _pairs(config.branch_budget), agents, sources)


def _pairs(budget: Budget | None) -> tuple[tuple[str, float], ...]:
    return () if budget is None else tuple(budget.limits().items())


def _sources(
    config: ExecutionConfig, rules: Iterable[BudgetRule], settings_file: str | None
) -> dict[tuple[str, str], str]:
    """Where each limit of the config was set: the ``budget(...)`` rule whose limit holds (the
    lower of rule and config, see :func:`configured`), else its ``ExecutionConfig`` field, or
    the key under ``execution:`` of the workflow file it was read from."""
    found = tuple(rules)
    if settings_file is None:
        fields = ("ExecutionConfig.budget", "ExecutionConfig.branch_budget")
        agent_field = "ExecutionConfig.agent_budgets[{!r}]"
    else:
        fields = ("execution.budget", "execution.branch_budget")
        agent_field = "execution.agent_budgets.{}"
    scopes = [
        ("run", "run", fields[0], config.budget),
        ("branch", "branch", fields[1], config.branch_budget),
    ]
    scopes += [
        (f"agent {name!r}", name, agent_field.format(name), budget)
        for name, budget in config.agent_budgets.items()
    ]
    file = "" if settings_file is None else f" of {settings_file}"
    sources: dict[tuple[str, str], str] = {}
    for name, scope, field_name, budget in scopes:
        for limit, allowed in _pairs(budget):
            holding = (
                r for r in found if r.scope == scope and dict(r.limits).get(limit) == allowed
            )
            rule = next(holding, None)
            where = f"the topology rule {rule.to_text()}" if rule else f"{field_name}.{limit}{file}"
            sources[(name, limit)] = f"in {where}"
    return sources


def configured(
    config: ExecutionConfig, rules: Iterable[Rule], agents: Iterable[str]
) -> ExecutionConfig:
    """The run's config with its topology's ``budget(...)`` rules added (where both set a
    limit, the lower one holds, as for ``max_steps``); a ConfigurationError for an
    ``agent_budgets`` entry naming no agent of the topology."""
    known = set(agents)
    for name in config.agent_budgets:
        if name not in known:
            raise ConfigurationError(
                f"ExecutionConfig agent_budgets[{name!r}]: no agent {name!r} in the topology "
                f"(its agents: {', '.join(sorted(known))})"
            )
    found = [rule for rule in rules if isinstance(rule, BudgetRule)]
    if not found:
        return config
    run, branch, per_agent = config.budget, config.branch_budget, dict(config.agent_budgets)
    for rule in found:
        if rule.scope == "run":
            run = _lower(run, rule.budget())
        elif rule.scope == "branch":
            branch = _lower(branch, rule.budget())
        else:
            per_agent[rule.scope] = _lower(per_agent.get(rule.scope), rule.budget())
    return config.model_copy(
        update={"budget": run, "branch_budget": branch, "agent_budgets": per_agent}
    )


def _lower(given: Budget | None, rule: Budget) -> Budget:
    if given is None:
        return rule
    limits = given.limits()
    for name, value in rule.limits().items():
        limits[name] = min(value, limits.get(name, value))
    return Budget.model_validate(limits)
