"""The run configs (``orchestra.coordination.config``): strict types, bounds, and the plain data
they serialise to, which sessions store and read back.

A wrong type is an error naming the field, never a silent conversion (``"300"`` is not 300);
what the API documents as accepted stays accepted: an int where a float goes, a verbosity as
its number, a convergence policy as ``"all"``, ``"any"``, a ratio or a mapping.
"""

from __future__ import annotations

import json
import math
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel, ValidationError

from orchestra import (
    AgentRegistry,
    CommunicationConfig,
    ConvergencePolicy,
    ErrorHandlingConfig,
    ExecutionConfig,
    FunctionAgent,
    Node,
    Orchestra,
    StatusConfig,
    Topology,
)
from orchestra.coordination.config import VerbosityLevel
from orchestra.workflow import WorkflowError, load_workflow

TESTS = Path(__file__).parent


def field_errors(error: pytest.ExceptionInfo[ValidationError]) -> list[tuple[str, str]]:
    """(field path, error type) of each problem pydantic found."""
    return [
        (".".join(str(part) for part in problem["loc"]), problem["type"])
        for problem in error.value.errors()
    ]


# ---- wrong types are refused, naming the field ---------------------------------------------


WRONG_TYPES = [
    # text for a number
    (ExecutionConfig, "convergence_timeout", "300"),
    (ExecutionConfig, "branch_timeout", "60.5"),
    (ExecutionConfig, "step_timeout", "1e3"),
    (ExecutionConfig, "max_steering_retries", "3"),
    (ErrorHandlingConfig, "max_retries", "2"),
    (ErrorHandlingConfig, "retry_initial_delay", "0.5"),
    (ErrorHandlingConfig, "retry_max_delay", "30"),
    (CommunicationConfig, "user_timeout", "10"),
    (ConvergencePolicy, "min_ratio", "0.5"),
    (ConvergencePolicy, "k", "2"),
    # a float for an int
    (ExecutionConfig, "max_steering_retries", 3.0),
    (ErrorHandlingConfig, "max_retries", 2.0),
    (ConvergencePolicy, "k", 2.0),
    # a bool for a number
    (ExecutionConfig, "step_timeout", True),
    (ExecutionConfig, "max_steering_retries", True),
    (ErrorHandlingConfig, "max_retries", False),
    (ErrorHandlingConfig, "retry_max_delay", True),
    (ConvergencePolicy, "k", True),
    # text or a number for a bool
    (ExecutionConfig, "dynamic_convergence_enabled", "false"),
    (ExecutionConfig, "dynamic_convergence_enabled", 0),
    (StatusConfig, "enabled", "yes"),
    (StatusConfig, "enabled", 1),
    (StatusConfig, "show_actions", "true"),
    (ErrorHandlingConfig, "enable_error_routing", 1),
    (ErrorHandlingConfig, "preserve_error_context", "no"),
    # a number or bytes for a choice of words
    (ExecutionConfig, "steering_mode", 1),
    (ExecutionConfig, "steering_mode", b"auto"),
    (ConvergencePolicy, "on_insufficient", b"fail"),
    # verbosity: a VerbosityLevel or 0, 1, 2 only
    (StatusConfig, "verbosity", "1"),
    (StatusConfig, "verbosity", "VERBOSE"),
    (StatusConfig, "verbosity", 1.0),
    (StatusConfig, "verbosity", True),
    (StatusConfig, "verbosity", 3),
    (StatusConfig, "verbosity", -1),
    # a nested config of the wrong kind
    (ExecutionConfig, "status", "verbose"),
    (ExecutionConfig, "status", 2),
]


@pytest.mark.parametrize(
    ("config", "field", "value"),
    WRONG_TYPES,
    ids=[f"{c.__name__}.{f}={v!r}" for c, f, v in WRONG_TYPES],
)
def test_a_value_of_the_wrong_type_is_refused_naming_its_field(
    config: type[BaseModel], field: str, value: Any
) -> None:
    with pytest.raises(ValidationError) as error:
        config(**{field: value})
    assert [where for where, _ in field_errors(error)] == [field]
    assert field in str(error.value)


def test_a_nested_status_of_the_wrong_type_names_its_path() -> None:
    with pytest.raises(ValidationError) as error:
        ExecutionConfig(status={"verbosity": "2", "enabled": "yes"})
    assert sorted(where for where, _ in field_errors(error)) == [
        "status.enabled",
        "status.verbosity",
    ]


def test_a_string_timeout_was_the_reported_case() -> None:
    """Issue 10, item 7: ``ExecutionConfig(convergence_timeout='300')`` was accepted."""
    with pytest.raises(ValidationError, match=r"convergence_timeout\n  Input should be a valid"):
        ExecutionConfig(convergence_timeout="300")


# ---- what the API documents stays accepted ----------------------------------------------------


def test_an_int_is_accepted_where_a_float_goes_and_stays_a_float() -> None:
    config = ExecutionConfig(convergence_timeout=300, branch_timeout=600, step_timeout=1)
    assert config.convergence_timeout == 300.0 and isinstance(config.convergence_timeout, float)
    assert isinstance(config.branch_timeout, float) and isinstance(config.step_timeout, float)
    errors = ErrorHandlingConfig(retry_initial_delay=1, retry_max_delay=10)
    assert (errors.retry_initial_delay, errors.retry_max_delay) == (1.0, 10.0)
    assert CommunicationConfig(user_timeout=5).user_timeout == 5.0
    assert ConvergencePolicy(min_ratio=1).min_ratio == 1.0


@pytest.mark.parametrize(
    ("level", "expected"),
    [
        (0, VerbosityLevel.QUIET),
        (1, VerbosityLevel.NORMAL),
        (2, VerbosityLevel.VERBOSE),
        (VerbosityLevel.QUIET, VerbosityLevel.QUIET),
        (VerbosityLevel.VERBOSE, VerbosityLevel.VERBOSE),
    ],
)
def test_verbosity_is_a_level_or_its_number(level: Any, expected: VerbosityLevel) -> None:
    assert StatusConfig(verbosity=level).verbosity is expected
    from_level = StatusConfig.from_verbosity(level)
    assert from_level.verbosity is expected
    assert from_level.enabled == (expected > VerbosityLevel.QUIET)
    assert from_level.show_actions == (expected == VerbosityLevel.VERBOSE)


@pytest.mark.parametrize("level", [True, 1.0, "1", 3, None])
def test_from_verbosity_refuses_what_is_not_a_level_naming_verbosity(level: Any) -> None:
    with pytest.raises(ValidationError) as error:
        StatusConfig.from_verbosity(level)
    assert [where for where, _ in field_errors(error)] == ["verbosity"]


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        ("all", ConvergencePolicy()),
        ("any", ConvergencePolicy(k=1)),
        (0.5, ConvergencePolicy(min_ratio=0.5)),
        (1, ConvergencePolicy(min_ratio=1.0)),
        ({"k": 2, "on_insufficient": "proceed"}, ConvergencePolicy(k=2, on_insufficient="proceed")),
        ({"min_ratio": 1}, ConvergencePolicy(min_ratio=1.0)),
        (ConvergencePolicy(k=3), ConvergencePolicy(k=3)),
    ],
)
def test_the_convergence_policy_coercions_stay(policy: Any, expected: ConvergencePolicy) -> None:
    assert ConvergencePolicy.coerce(policy) == expected
    assert ExecutionConfig(convergence_policy=policy).convergence_policy == expected


@pytest.mark.parametrize(
    ("policy", "field"),
    [
        ({"k": "2"}, "k"),
        ({"k": 2.0}, "k"),
        ({"min_ratio": "0.5"}, "min_ratio"),
        ({"on_insufficient": True}, "on_insufficient"),
    ],
)
def test_a_policy_mapping_of_wrong_types_is_refused_naming_the_field(
    policy: dict[str, Any], field: str
) -> None:
    with pytest.raises(ValidationError, match=field):
        ConvergencePolicy.coerce(policy)
    with pytest.raises(ValidationError, match=f"convergence_policy.*{field}|{field}"):
        ExecutionConfig(convergence_policy=policy)


@pytest.mark.parametrize("policy", ["0.5", "most", True, None, [1]])
def test_anything_else_is_not_a_policy(policy: Any) -> None:
    with pytest.raises(ValidationError, match="convergence_policy"):
        ExecutionConfig(convergence_policy=policy)


async def test_a_node_policy_of_wrong_types_fails_the_run_naming_the_node() -> None:
    agents = [
        FunctionAgent(name, lambda task, context: "done", register=False) for name in ("W1", "W2")
    ]
    hub = FunctionAgent("Hub", lambda task, context: "done", register=False)
    topology = Topology(
        nodes=[Node("Hub", metadata={"convergence_policy": {"k": "1"}}), "W1", "W2"],
        edges=["Hub <-> W1", "Hub <-> W2"],
        entry_point="Hub",
    )
    result = await Orchestra.run(
        "job",
        topology,
        agent_registry=AgentRegistry([hub, *agents]),
        execution_config=ExecutionConfig(status=StatusConfig.from_verbosity(0)),
    )
    assert not result.success
    assert "node 'Hub': convergence_policy" in str(result.error) and "k" in str(result.error)


# ---- bounds ---------------------------------------------------------------------------------


OUT_OF_BOUNDS = [
    (ExecutionConfig, "convergence_timeout", 0),
    (ExecutionConfig, "branch_timeout", -1.0),
    (ExecutionConfig, "step_timeout", -0.001),
    (ExecutionConfig, "max_steering_retries", -1),
    (ErrorHandlingConfig, "max_retries", -1),
    (ErrorHandlingConfig, "retry_initial_delay", -0.5),
    (ErrorHandlingConfig, "retry_max_delay", -1),
    (CommunicationConfig, "user_timeout", 0.0),
    (ConvergencePolicy, "min_ratio", 0),
    (ConvergencePolicy, "min_ratio", 1.5),
    (ConvergencePolicy, "k", 0),
    # durations are finite: None, not infinity, means no limit, and JSON has no infinity
    (ExecutionConfig, "convergence_timeout", math.inf),
    (ExecutionConfig, "branch_timeout", math.inf),
    (ExecutionConfig, "step_timeout", math.nan),
    (ErrorHandlingConfig, "retry_initial_delay", math.inf),
    (ErrorHandlingConfig, "retry_max_delay", math.inf),
    (ErrorHandlingConfig, "retry_max_delay", math.nan),
    (CommunicationConfig, "user_timeout", math.inf),
    (ConvergencePolicy, "min_ratio", math.nan),
]


@pytest.mark.parametrize(
    ("config", "field", "value"),
    OUT_OF_BOUNDS,
    ids=[f"{c.__name__}.{f}={v!r}" for c, f, v in OUT_OF_BOUNDS],
)
def test_a_value_out_of_bounds_is_refused_naming_its_field(
    config: type[BaseModel], field: str, value: Any
) -> None:
    with pytest.raises(ValidationError) as error:
        config(**{field: value})
    assert [where for where, _ in field_errors(error)] == [field]


def test_the_smallest_values_that_make_sense_are_accepted() -> None:
    assert ExecutionConfig(max_steering_retries=0).max_steering_retries == 0
    none = ErrorHandlingConfig(max_retries=0, retry_initial_delay=0, retry_max_delay=0)
    assert (none.max_retries, none.retry_initial_delay, none.retry_max_delay) == (0, 0.0, 0.0)
    assert ExecutionConfig(step_timeout=0.001).step_timeout == 0.001
    assert ConvergencePolicy(k=1, on_insufficient="proceed").k == 1


def test_a_retry_cap_below_the_initial_delay_is_allowed() -> None:
    """``retry_max_delay`` caps every wait, the first included: ``retry_max_delay=0`` alone
    (retry at once) must not need ``retry_initial_delay=0`` as well."""
    assert ErrorHandlingConfig(retry_max_delay=0).retry_max_delay == 0.0
    capped = ErrorHandlingConfig(retry_initial_delay=2, retry_max_delay=1)
    assert capped.retry_initial_delay > capped.retry_max_delay


def test_extra_fields_are_still_refused() -> None:
    with pytest.raises(ValidationError, match="timeout\n  Extra inputs"):
        ExecutionConfig(timeout=10)


# ---- plain data, as sessions store it, validates back equal ----------------------------------


CONFIGS = [
    ExecutionConfig(),
    ExecutionConfig(
        convergence_timeout=300,
        branch_timeout=1200.5,
        step_timeout=0.25,
        convergence_policy=ConvergencePolicy(k=2, on_insufficient="proceed"),
        dynamic_convergence_enabled=False,
        steering_mode="always",
        max_steering_retries=0,
        status=StatusConfig.from_verbosity(VerbosityLevel.VERBOSE),
    ),
    ExecutionConfig(convergence_policy="any", status=StatusConfig.from_verbosity(0)),
    ExecutionConfig(convergence_policy=0.5, steering_mode="never"),
    StatusConfig(),
    StatusConfig(enabled=False, verbosity=VerbosityLevel.QUIET, show_actions=True),
    StatusConfig.from_verbosity(2),
    ConvergencePolicy(),
    ConvergencePolicy(min_ratio=0.75, on_insufficient="proceed"),
    ErrorHandlingConfig(),
    ErrorHandlingConfig(
        enable_error_routing=True,
        preserve_error_context=False,
        max_retries=0,
        retry_initial_delay=0,
        retry_max_delay=2,
    ),
    CommunicationConfig(),
    CommunicationConfig(user_timeout=30),
]


@pytest.mark.parametrize("config", CONFIGS, ids=[repr(c) for c in CONFIGS])
def test_plain_data_validates_back_to_an_equal_config(config: BaseModel) -> None:
    kind = type(config)
    data = config.model_dump(mode="json")
    assert kind.model_validate(data) == config
    # as a session's log holds it: JSON text, read with json.loads
    assert kind.model_validate(json.loads(json.dumps(data))) == config
    assert kind.model_validate_json(config.model_dump_json()) == config
    # and the Python form (enum members, nested models as dicts) too
    assert kind.model_validate(config.model_dump()) == config


@pytest.mark.parametrize("config", CONFIGS, ids=[repr(c) for c in CONFIGS])
def test_plain_data_holds_only_json_types(config: BaseModel) -> None:
    data = config.model_dump(mode="json")
    assert json.loads(json.dumps(data, allow_nan=False)) == data


def test_a_stored_verbosity_is_its_number() -> None:
    stored = ExecutionConfig(status=StatusConfig.from_verbosity(2)).model_dump(mode="json")
    assert stored["status"]["verbosity"] == 2
    assert ExecutionConfig.model_validate(stored).status.verbosity is VerbosityLevel.VERBOSE


def test_stored_data_is_checked_as_strictly_as_arguments() -> None:
    stored = ExecutionConfig().model_dump(mode="json")
    stored["convergence_timeout"] = "300"
    with pytest.raises(ValidationError, match="convergence_timeout"):
        ExecutionConfig.model_validate(stored)
    with pytest.raises(ValidationError, match="convergence_timeout"):
        ExecutionConfig.model_validate_json(json.dumps(stored))


# ---- configs written in YAML (workflow files) ---------------------------------------------------


def test_yaml_numbers_flags_and_words_build_configs() -> None:
    execution = yaml.safe_load(
        textwrap.dedent(
            """
            convergence_timeout: 300
            branch_timeout: 600.5
            step_timeout: 60
            dynamic_convergence_enabled: false
            steering_mode: always
            max_steering_retries: 2
            convergence_policy: {k: 2, on_insufficient: proceed}
            status: {verbosity: 2, show_actions: true}
            """
        )
    )
    config = ExecutionConfig(**execution)
    assert config.convergence_timeout == 300.0 and config.branch_timeout == 600.5
    assert config.convergence_policy == ConvergencePolicy(k=2, on_insufficient="proceed")
    assert config.status.verbosity is VerbosityLevel.VERBOSE and config.status.show_actions
    assert not config.dynamic_convergence_enabled and config.max_steering_retries == 2
    errors = yaml.safe_load("{max_retries: 5, retry_initial_delay: 1, retry_max_delay: 60}")
    assert ErrorHandlingConfig(**errors).retry_max_delay == 60.0


def workflow(tmp_path: Path, execution: str, error_handling: str = "{}") -> Path:
    path = tmp_path / "flow.yaml"
    path.write_text(
        "agents:\n"
        "  - name: A\n"
        "    function: flow_nodes:shout\n"
        "topology: {nodes: [A]}\n"
        f"execution: {execution}\n"
        f"error_handling: {error_handling}\n"
    )
    return path


def test_a_workflow_file_with_yaml_numbers_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(TESTS))
    loaded = load_workflow(
        workflow(
            tmp_path,
            "{max_steps: 30, convergence_timeout: 300, step_timeout: 1.5, convergence_policy: any}",
            "{max_retries: 1, retry_initial_delay: 0, retry_max_delay: 2}",
        )
    )
    assert loaded.max_steps == 30
    assert loaded.execution.convergence_timeout == 300.0
    assert loaded.execution.step_timeout == 1.5
    assert loaded.execution.convergence_policy == ConvergencePolicy(k=1)
    assert loaded.error_handling.retry_max_delay == 2.0


@pytest.mark.parametrize(
    ("execution", "error_handling", "where"),
    [
        ('{convergence_timeout: "300"}', "{}", "flow.yaml:5: execution.convergence_timeout"),
        # YAML reads 1e3 (no dot) as text, which used to become 1000.0 unnoticed
        ("{step_timeout: 1e3}", "{}", "flow.yaml:5: execution.step_timeout"),
        ("{dynamic_convergence_enabled: 'no'}", "{}", "execution.dynamic_convergence_enabled"),
        ("{}", "{max_retries: 2.5}", "flow.yaml:6: error_handling.max_retries"),
    ],
)
def test_a_workflow_file_with_a_wrong_type_names_line_and_field(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    execution: str,
    error_handling: str,
    where: str,
) -> None:
    monkeypatch.syspath_prepend(str(TESTS))
    with pytest.raises(WorkflowError) as error:
        load_workflow(workflow(tmp_path, execution, error_handling))
    assert where in str(error.value)
