"""The engine core on its own: ``Engine.apply(input) -> effects``, inputs written by hand.

The core is pure — no I/O, no clock — so a test drives it with inputs carrying whatever times it
likes, and checks the state, events and effects that come out.
"""

from __future__ import annotations

from typing import Any

from orchestra import Action, ExecutionConfig
from orchestra.agents.contract import StepOutcome
from orchestra.coordination.config import ErrorHandlingConfig
from orchestra.coordination.engine import effects as fx
from orchestra.coordination.engine import events as ev
from orchestra.coordination.engine import inputs as inp
from orchestra.coordination.engine.core import Engine
from orchestra.coordination.results import result_of
from orchestra.coordination.topology import Topology


def engine_for(topology: dict[str, Any]) -> Engine:
    analysis = Topology.coerce(topology).analyze()
    return Engine(run_id="r", analysis=analysis, tools={}, stream=ev.EventStream())


def start(engine: Engine, at: float, task: Any = "task") -> list[fx.Effect]:
    return engine.apply(
        inp.RunStart(
            at=at,
            task=task,
            context={},
            max_steps=10,
            config=ExecutionConfig(),
            error_config=ErrorHandlingConfig(),
            topology=(),
        )
    )


def step(engine: Engine, branch: str, at: float, took: float, value: Any) -> None:
    effects = engine.apply(inp.StepBegin(at=at, branch_id=branch))
    assert isinstance(effects[-1], fx.TakeStep)
    outcome = StepOutcome(action=value, by_code=True)
    engine.apply(
        inp.StepResult(at=at + took, branch_id=branch, outcome=outcome, messages=(), duration=took)
    )


PIPELINE = {"nodes": ["A", "B"], "edges": ["A -> B"]}


def test_the_run_starts_at_its_first_input_and_asks_for_its_first_branch() -> None:
    engine = engine_for(PIPELINE)
    effects = start(engine, 100.0)
    assert effects == [fx.ArmBranchTimer("b0"), fx.Spawn("b0")]
    assert engine.started_at == 100.0 and engine.branches["b0"].created_at == 100.0
    assert [type(e).__name__ for e in engine.stream.events] == ["RunStarted", "BranchCreated"]
    assert all(event.at == 100.0 for event in engine.stream.events)


def test_durations_leave_out_the_time_a_run_was_paused() -> None:
    """Branch durations used to count the hours a run sat paused, while the run's own
    duration did not."""
    engine = engine_for(PIPELINE)
    start(engine, 100.0)
    step(engine, "b0", 101.0, 2.0, Action.invoke("B", "x"))  # 101 -> 103
    engine.apply(inp.PauseRequest(at=103.5, reason="lunch"))
    engine.apply(inp.RunEnd(at=104.0, paused=True, success=False, error=None))
    paused = result_of(engine, "r")
    assert paused.total_duration == 4.0 and paused.branch_results[0].duration == 4.0
    engine.apply(inp.RunResume(at=3704.0, context={}))  # an hour later
    step(engine, "b0", 3704.0, 1.0, Action.final("done"))  # B finishes
    engine.apply(inp.RunEnd(at=3706.0, paused=False, success=True, error=None))
    result = result_of(engine, "r")
    assert result.success and result.final_response == "done"
    assert result.total_duration == 6.0  # 100 -> 104, then 3704 -> 3706
    assert result.branch_results[0].duration == 5.0  # it ended with B's answer, at 3705
    assert engine.gaps == [(104.0, 3704.0)]


def test_a_crash_leaves_a_gap_from_the_last_input_to_the_resume() -> None:
    engine = engine_for(PIPELINE)
    start(engine, 100.0)
    step(engine, "b0", 101.0, 1.0, Action.invoke("B", "x"))  # the log ends at 102
    engine.apply(inp.RunResume(at=500.0, context={"note": "after the crash"}))
    step(engine, "b0", 500.0, 0.5, Action.final("done"))
    engine.apply(inp.RunEnd(at=501.0, paused=False, success=True, error=None))
    result = result_of(engine, "r")
    assert engine.gaps == [(102.0, 500.0)]
    assert result.total_duration == 3.0  # 100 -> 102, then 500 -> 501
    assert result.branch_results[0].duration == 2.5  # it ended at 500.5
    assert engine.context == {"note": "after the crash"}


def test_times_a_log_did_not_keep_are_taken_out_by_the_resume() -> None:
    """A log of format 1 kept no times: its records read as 0. Resumed, its branches report
    the time they worked after the resume, not the time since 1970."""
    engine = engine_for(PIPELINE)
    start(engine, 0.0)
    step(engine, "b0", 0.0, 0.0, Action.invoke("B", "x"))
    engine.apply(inp.RunEnd(at=0.0, paused=True, success=False, error=None))
    engine.apply(inp.RunResume(at=1_800_000_000.0, context={}))
    step(engine, "b0", 1_800_000_000.0, 2.0, Action.final("done"))
    engine.apply(inp.RunEnd(at=1_800_000_003.0, paused=False, success=True, error=None))
    result = result_of(engine, "r")
    assert result.total_duration == 3.0 and result.branch_results[0].duration == 2.0


def test_a_clock_that_steps_back_never_makes_time_run_backwards() -> None:
    engine = engine_for(PIPELINE)
    start(engine, 100.0)
    step(engine, "b0", 90.0, 1.0, Action.invoke("B", "x"))  # the wall clock was set back
    assert engine.now == 100.0
    assert all(event.at == 100.0 for event in engine.stream.events)
