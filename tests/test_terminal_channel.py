"""The terminal as the User node: ``orchestra run`` on a real pseudo-terminal (pexpect) asks an
agent's question, labelled with its agent, branch and id; parallel questions are answered one
at a time; a multi-line answer; Ctrl-C while waiting stops the run so that ``orchestra resume``
asks the question again; the live view leaves the prompt alone. Below those, the channel itself
on a pipe, and what a question that is not answered in time does.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import re
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pexpect
import pytest
from helpers import TESTS, fn, quiet, run_cli

from orchestra import Action, AgentRegistry, TerminalChannel
from orchestra.communication import CommunicationManager, ProgrammaticChannel, Question, terminal
from orchestra.coordination.orchestra import OrchestraInstance
from orchestra.coordination.state import SQLiteStorageBackend, StateManager
from orchestra.coordination.wiring import _AskWhenCleared
from orchestra.errors import ConfigurationError, UserInputError

WAIT = 60  # pexpect's bound on each expected output: a hang fails, it never paces the test
PROMPT = re.compile(r"\? (\w+) asks \(branch (b\d+), question (q\d+)\)")

ASKER_FLOW = """\
agents: [{name: Asker, function: 'terminal_nodes:asker'}]
topology: {nodes: [User, Asker], edges: [User -> Asker, Asker -> User]}
task: "ASK: What is your name?\\e[2J"
"""

PARALLEL_FLOW = """\
agents:
  - {name: Hub, function: 'terminal_nodes:hub'}
  - {name: Left, function: 'terminal_nodes:left'}
  - {name: Right, function: 'terminal_nodes:right'}
topology:
  nodes: [User, Hub, Left, Right]
  edges: [Hub <-> Left, Hub <-> Right, Left -> User, Right -> User]
  rules: ['parallel(Left, Right)']
  entry_point: Hub
  exit_points: [Hub]
task: go
"""


def spawn(
    folder: Path,
    *args: str,
    term: str = "dumb",
    program: str = sys.executable,
    argv: list[str] | None = None,
) -> pexpect.spawn:
    """``orchestra ARGS`` (or ``program ARGV``) on a pseudo-terminal of its own, in ``folder``."""
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(Path.home()),
        "COLUMNS": "150",
        "LINES": "40",
        "TERM": term,
        "PYTHONPATH": os.pathsep.join((str(TESTS.parent), str(TESTS))),
    }
    return pexpect.spawn(
        program,
        ["-m", "orchestra", *args] if argv is None else argv,
        cwd=str(folder),
        env=env,
        encoding="utf-8",
        timeout=WAIT,
        dimensions=(40, 150),
    )


def flow(folder: Path, text: str) -> Path:
    path = folder / "flow.yaml"
    path.write_text(text)
    return path


def ended(child: pexpect.spawn) -> tuple[str, int]:
    """What the command printed until it ended, and its exit code."""
    child.expect(pexpect.EOF)
    child.close()
    return child.before, child.exitstatus


def test_an_agents_question_is_asked_and_answered_on_the_terminal(tmp_path: Path) -> None:
    flow(tmp_path, ASKER_FLOW)
    child = spawn(tmp_path, "run", "flow.yaml", "--quiet")
    child.expect(PROMPT)
    assert child.match.groups() == ("Asker", "b0", "q1")
    child.expect("> ")
    assert "What is your name?\\x1b[2J" in child.before  # the escape shown, not obeyed
    assert "\x1b[2J" not in child.before
    child.sendline("Ada Lovelace")
    output, code = ended(child)
    assert code == 0, output
    assert "answer='Ada Lovelace'" in output


FOLLOW_UP_FLOW = """\
agents: [{name: Tutor, function: 'terminal_nodes:tutor'}]
topology: {nodes: [User, Tutor], edges: [User -> Tutor, Tutor -> User]}
task: "explain\\e[2J"
"""
FOLLOW_UP = re.compile(r"\? Follow-up \((f\d+)\)")


def test_follow_ups_show_each_answer_and_an_empty_line_ends_them(tmp_path: Path) -> None:
    flow(tmp_path, FOLLOW_UP_FLOW)
    child = spawn(tmp_path, "run", "flow.yaml", "--quiet", "--no-store", "--follow-ups")
    child.expect(FOLLOW_UP)
    assert child.match.group(1) == "f1"
    assert "Tutor on explain\\x1b[2J" in child.before  # the response, its escape shown
    assert "\x1b[2J" not in child.before
    child.expect("> ")
    child.sendline("and superposition?")
    child.expect(FOLLOW_UP)
    assert child.match.group(1) == "f2"
    assert "Tutor on and superposition?" in child.before
    child.expect("> ")
    child.sendline("")
    output, code = ended(child)
    assert code == 0, output
    assert "Tutor on and superposition?" in output  # the final response: the last round's
    assert FOLLOW_UP.search(output) is None  # asked no more


def test_follow_ups_with_no_terminal_are_not_offered_and_the_run_succeeds(tmp_path: Path) -> None:
    flow(tmp_path, FOLLOW_UP_FLOW)
    result = run_cli("run", "flow.yaml", "--quiet", "--no-store", "--follow-ups", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Follow-ups are not offered: standard input (or the screen) is no terminal." in (
        result.stdout
    )
    assert "Tutor on explain" in result.stdout
    assert "UserWarning" not in result.stderr


def test_a_multi_line_answer_is_typed_between_triple_quotes(tmp_path: Path) -> None:
    flow(tmp_path, ASKER_FLOW)
    child = spawn(tmp_path, "run", "flow.yaml", "--quiet", "--no-store")
    child.expect("> ")
    for line in ('"""', "first line", "", "  third, indented", '"""'):
        child.sendline(line)
    output, code = ended(child)
    assert code == 0, output
    assert "answer='first line\\n\\n  third, indented'" in output


def test_parallel_questions_are_answered_one_at_a_time_each_labelled(tmp_path: Path) -> None:
    flow(tmp_path, PARALLEL_FLOW)
    child = spawn(tmp_path, "run", "flow.yaml", "--quiet", "--no-store")
    asked = []
    for _ in range(2):
        child.expect(PROMPT)
        agent, branch, question = child.match.groups()
        asked.append((agent, branch, question))
        child.expect("> ")
        assert PROMPT.search(child.before) is None  # one question on the screen at a time
        child.sendline(f"for {agent}")
    output, code = ended(child)
    assert code == 0, output
    assert sorted((agent, branch) for agent, branch, _ in asked) == [
        ("Left", "b1"),
        ("Right", "b2"),
    ]
    assert {question for _, _, question in asked} == {"q1", "q2"}
    flat = " ".join(output.split())
    assert "Left heard 'for Left'" in flat and "Right heard 'for Right'" in flat


def test_ctrl_c_while_waiting_stops_the_run_and_resume_asks_again(tmp_path: Path) -> None:
    flow(tmp_path, ASKER_FLOW)
    child = spawn(tmp_path, "run", "flow.yaml", "--quiet")
    child.expect(r"Session (\w+), kept in")
    session = child.match.group(1)
    child.expect("> ")
    child.sendintr()
    output, code = ended(child)
    assert code == 130, output
    assert f"Interrupted. Resume with: orchestra resume flow.yaml {session}" in output

    again = spawn(tmp_path, "resume", "flow.yaml", session, "--quiet")
    again.expect(PROMPT)
    assert again.match.groups() == ("Asker", "b0", "q1")  # the same question, asked again
    again.expect("> ")
    again.sendline("Grace")
    output, code = ended(again)
    assert code == 0, output
    assert "answer='Grace'" in output
    listed = spawn(tmp_path, "sessions", "list")
    output, code = ended(listed)
    assert code == 0 and "finished" in output, output


def test_the_prompt_stays_on_screen_with_the_live_view(tmp_path: Path) -> None:
    """The live view (an interactive terminal, TERM=xterm) takes its area down before the
    question is shown, and draws nothing over the prompt while the user types."""
    flow(tmp_path, ASKER_FLOW)
    child = spawn(tmp_path, "run", "flow.yaml", "--no-store", term="xterm")
    child.expect(PROMPT)
    assert "waiting for the user" in child.before  # the live view was drawn, then taken down
    child.expect("> ")
    child.sendline("Ada")
    child.expect("Ada\r\n")
    assert child.before == "", repr(child.before)  # nothing between the prompt and the echo
    output, code = ended(child)
    assert code == 0, output
    assert "answer='Ada'" in output


def test_a_queued_question_is_the_last_thing_on_screen_with_the_live_view(tmp_path: Path) -> None:
    """Two branches ask at once with the live view on: once the first is answered, the second's
    prompt was followed by the run's block drawn again (the user typed under a box)."""
    flow(tmp_path, PARALLEL_FLOW)
    child = spawn(tmp_path, "run", "flow.yaml", "--no-store", term="xterm")
    child.expect(PROMPT)
    first = child.match.group(1)
    drawn = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", child.before)  # the block before the prompt
    child.expect("> ")
    assert all(f"{agent}  waiting for the user" in drawn for agent in ("Left", "Right")), drawn
    assert child.before.startswith(" (1 more waiting):"), repr(child.before)
    child.sendline(f"for {first}")
    child.expect(PROMPT)
    second = child.match.group(1)
    child.expect("> ")
    child.sendline(f"for {second}")
    child.expect(f"for {second}\r\n")
    assert child.before == "", repr(child.before)  # nothing between the prompt and the echo
    output, code = ended(child)
    assert code == 0, output
    assert "waiting for the user" not in output  # no block drawn while the second waited
    flat = " ".join(output.split())
    assert f"{first} heard 'for {first}'" in flat and f"{second} heard 'for {second}'" in flat


def test_another_runs_end_is_shown_in_order_above_the_prompt_shown_again(
    tmp_path: Path,
) -> None:
    """Finding 3: while one run's question waited on the terminal, another run in the process
    ended and nothing of it was drawn: its final block came out only after the answer, after
    what its caller printed once it returned. Now the block is printed below the prompt, the
    prompt is shown again, and only then does that run return; the answer still works."""
    signal = tmp_path / "signal"
    os.mkfifo(signal)
    child = spawn(tmp_path, term="xterm", argv=["-m", "terminal_two_runs", str(signal)])
    child.expect(PROMPT)
    child.expect("> ")
    signal.write_text("go")  # run 'other' ends while the question waits
    child.expect("OTHER RETURNED")
    shown = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", child.before)
    assert shown.startswith("\r\n╭─ run other · succeeded"), repr(shown)  # off the prompt's line
    assert "Other  ✓ done" in shown
    assert shown.endswith("? Asker asks (branch b0, question q1) still waits:\r\n> "), repr(shown)
    assert "run asker" not in shown  # no progress frame under the prompt
    child.sendline("Ada")
    output, code = ended(child)
    assert code == 0, output
    assert "ASKER RETURNED \"answer='Ada'\"" in output


# ---- the channel itself, on a pipe ------------------------------------------------------------


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    read, write = os.pipe()
    yield read, write
    for fd in (read, write):
        with contextlib.suppress(OSError):
            os.close(fd)


async def prompts(shown: io.StringIO, count: int) -> None:
    """Until ``count`` prompts are shown (each written by a worker thread), within WAIT."""

    async def shown_yet() -> None:
        while shown.getvalue().count("> ") < count:
            await asyncio.sleep(0)

    await asyncio.wait_for(shown_yet(), WAIT)


def question(number: int, text: str = "Which one?", agent: str = "A") -> Question:
    return Question(f"run:token:q{number}", "run", f"b{number}", agent, text)


async def test_the_channel_reads_lines_without_blocking_the_loop(pipe: tuple[int, int]) -> None:
    read, write = pipe
    shown = io.StringIO()
    channel = TerminalChannel(read, shown)
    answer = asyncio.create_task(channel.ask(question(1, "Pick\x07 one")))
    await prompts(shown, 1)  # the loop runs on while the channel waits
    assert "A asks (branch b1, question q1)" in shown.getvalue()
    assert "Pick\\x07 one" in shown.getvalue()
    os.write(write, "déjà vu\n".encode())
    assert await asyncio.wait_for(answer, WAIT) == "déjà vu"


async def test_the_prompt_shown_again_says_who_asks_and_where_to_type(
    pipe: tuple[int, int],
) -> None:
    """What the live view calls after printing another run's end below a prompt: the waiting
    question's label and a fresh ``> `` (saying so inside a block); nothing once answered."""
    read, write = pipe
    shown = io.StringIO()
    channel = TerminalChannel(read, shown)
    answer = asyncio.create_task(channel.ask(question(1)))
    await prompts(shown, 1)
    again = channel.prompt_again
    assert again == TerminalChannel(read, io.StringIO()).prompt_again  # one per input
    await asyncio.to_thread(again)
    assert shown.getvalue().endswith("? A asks (branch b1, question q1) still waits:\n> ")
    os.write(write, b'"""\nfirst\n')
    while not terminal._reader(read).in_block:  # the block begun
        await asyncio.sleep(0)
    await asyncio.to_thread(again)
    assert shown.getvalue().endswith('still waits:\n  (in a block: a line of """ ends it)\n> ')
    os.write(write, b'"""\n')
    assert await asyncio.wait_for(answer, WAIT) == "first"
    before = shown.getvalue()
    await asyncio.to_thread(again)
    assert shown.getvalue() == before


async def test_queued_questions_are_asked_in_turn(pipe: tuple[int, int]) -> None:
    read, write = pipe
    shown = io.StringIO()
    channel = TerminalChannel(read, shown)
    asks = [asyncio.create_task(channel.ask(question(n, agent=f"A{n}"))) for n in (1, 2, 3)]
    await prompts(shown, 1)
    assert "question q2" not in shown.getvalue()  # one question on the screen at a time
    os.write(write, b"one\n")
    assert await asyncio.wait_for(asks[0], WAIT) == "one"
    await prompts(shown, 2)
    assert "A2 asks (branch b2, question q2) (1 more waiting):" in shown.getvalue()
    os.write(write, b'"""\ntwo\nlines\n"""\nthree\n')
    assert await asyncio.wait_for(asks[1], WAIT) == "two\nlines"
    assert await asyncio.wait_for(asks[2], WAIT) == "three"
    assert "A3 asks (branch b3, question q3):" in shown.getvalue()


async def test_questions_held_up_by_the_live_view_count_as_waiting(pipe: tuple[int, int]) -> None:
    """Two questions asked at once wait together for the live view's area to come down: the
    first prompt was built before the second reached the channel, and never said it waits."""
    read, write = pipe
    shown = io.StringIO()
    both = threading.Barrier(2)  # each wait ends once both questions are held up in it

    class Screen:
        def prompting(self, reshow: object) -> contextlib.nullcontext[None]:
            return contextlib.nullcontext()

        def cleared(self) -> bool:
            both.wait(WAIT)
            return True

    manager = _AskWhenCleared(CommunicationManager(TerminalChannel(read, shown)), Screen())
    asks = [asyncio.create_task(manager.ask(question(n, agent=f"A{n}"))) for n in (1, 2)]
    await prompts(shown, 1)
    assert "(1 more waiting):" in shown.getvalue()
    os.write(write, b"one\ntwo\n")
    answers = [await asyncio.wait_for(ask, WAIT) for ask in asks]
    assert sorted(answers) == ["one", "two"]  # (either may be shown first)
    assert shown.getvalue().count("more waiting") == 1  # the second is the last


async def test_input_that_ends_before_an_answer_is_a_user_input_error(
    pipe: tuple[int, int],
) -> None:
    read, write = pipe
    channel = TerminalChannel(read, io.StringIO())
    os.write(write, b'"""\nunfinished')
    os.close(write)
    assert await asyncio.wait_for(channel.ask(question(1)), WAIT) == "unfinished"
    with pytest.raises(
        UserInputError, match=r"input ended before the question 'run:token:q2' of agent 'A'"
    ):
        await asyncio.wait_for(channel.ask(question(2)), WAIT)


# ---- a question not answered in time ----------------------------------------------------------


def asking_instance(tmp_path: Path, manager: CommunicationManager) -> OrchestraInstance:
    def asker(data: object, context: object) -> Action:
        return Action.ask_user("Colour?") if data == "task" else Action.final(f"got {data}")

    return OrchestraInstance(
        {"nodes": ["User", "A"], "edges": ["User -> A", "A -> User"]},
        agent_registry=AgentRegistry([fn("A", asker)]),
        initial_config=quiet(),
        communication_manager=manager,
        state_manager=StateManager(SQLiteStorageBackend(tmp_path / "state.db")),
    )


async def test_on_timeout_a_default_answer_is_given_journaled_and_replayed(
    tmp_path: Path,
) -> None:
    manager = CommunicationManager(
        ProgrammaticChannel(), 0.05, on_user_timeout="default", default_answer="blue"
    )
    instance = asking_instance(tmp_path, manager)
    result = await asyncio.wait_for(instance.execute("task", context={"session_id": "s"}), WAIT)
    assert result.success, result.error
    told = "(The user did not answer within 0.05s; go on with the default answer: blue)"
    assert result.final_response == f"got {told}"
    rebuilt = await instance.get_result("s")  # from the log: nothing is asked again
    assert rebuilt is not None and rebuilt.final_response == result.final_response


async def test_a_channels_own_timeout_fails_the_branch_naming_the_question(
    tmp_path: Path,
) -> None:
    read, write = os.pipe()
    try:
        channel = TerminalChannel(read, io.StringIO(), user_timeout=0.05)
        instance = asking_instance(tmp_path, CommunicationManager(channel, user_timeout=3600))
        result = await asyncio.wait_for(instance.execute("task", context={"session_id": "s"}), WAIT)
    finally:
        os.close(read)
        os.close(write)
    assert not result.success
    assert (
        "did not answer the question of agent 'A' within 0.05s (TerminalChannel user_timeout; question s:"
        in str(result.error)
    )
    rebuilt = await instance.get_result("s")
    assert rebuilt is not None and str(rebuilt.error) == str(result.error)


def test_a_timeout_choice_other_than_fail_or_default_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="on_user_timeout must be 'fail' or 'default'"):
        CommunicationManager(ProgrammaticChannel(), on_user_timeout="ignore")  # type: ignore[arg-type]
    with pytest.raises(
        ConfigurationError, match="user_timeout must be a positive, finite number of seconds, got 0"
    ):
        TerminalChannel(0, io.StringIO(), user_timeout=0)


# ---- Ctrl-D, late input, queued time, shared input, redirected stderr ---------------------------


def test_a_prompt_is_shown_on_the_terminal_when_only_stderr_goes_to_a_file(tmp_path: Path) -> None:
    """``orchestra run flow.yaml 2>err.log`` on a terminal: the prompt goes to standard output,
    the terminal, not into the file."""
    flow(tmp_path, ASKER_FLOW)
    command = f"{sys.executable} -m orchestra run flow.yaml --quiet --no-store 2>err.log"
    child = spawn(tmp_path, term="dumb", program="/bin/sh", argv=["-c", command])
    child.expect(PROMPT)
    child.expect("> ")
    child.sendline("Ada")
    output, code = ended(child)
    assert code == 0, output + (tmp_path / "err.log").read_text()
    assert "answer='Ada'" in output
    assert "asks" not in (tmp_path / "err.log").read_text()


def test_ctrl_d_ends_a_block_and_the_run_asks_the_next_question(tmp_path: Path) -> None:
    """A Ctrl-D that ended a block ended the terminal for the run: the other branch's question
    failed at once, unasked."""
    flow(tmp_path, PARALLEL_FLOW)
    child = spawn(tmp_path, "run", "flow.yaml", "--quiet", "--no-store")
    heard = {}
    child.expect(PROMPT)
    first = child.match.group(1)
    child.expect("> ")
    child.sendline('"""')
    child.sendline("line one")
    child.sendeof()
    heard[first] = "line one"
    child.expect(PROMPT)
    second = child.match.group(1)
    child.expect("> ")
    child.sendline("yes")
    heard[second] = "yes"
    output, code = ended(child)
    assert code == 0, output
    flat = " ".join(output.split())
    assert all(f"{agent} heard {answer!r}" in flat for agent, answer in heard.items()), flat


@pytest.fixture
def pty() -> Iterator[tuple[int, int]]:
    """A pseudo-terminal: the keyboard side (``main``) and the side a channel reads."""
    main, terminal = os.openpty()
    yield terminal, main
    for fd in (main, terminal):
        with contextlib.suppress(OSError):
            os.close(fd)


CTRL_D = b"\x04"


async def test_ctrl_d_ends_a_block_and_the_next_question_is_asked(pty: tuple[int, int]) -> None:
    read, keyboard = pty
    shown = io.StringIO()
    channel = TerminalChannel(read, shown)
    first = asyncio.create_task(channel.ask(question(1)))
    await prompts(shown, 1)
    os.write(keyboard, b'"""\nline one\n' + CTRL_D)
    assert await asyncio.wait_for(first, WAIT) == "line one"
    second = asyncio.create_task(channel.ask(question(2)))
    await prompts(shown, 2)
    os.write(keyboard, b"yes\n")
    assert await asyncio.wait_for(second, WAIT) == "yes"
    third = asyncio.create_task(channel.ask(question(3)))
    await prompts(shown, 3)
    os.write(keyboard, CTRL_D)  # at an empty prompt: this question gets no answer
    with pytest.raises(
        UserInputError, match=r"no answer \(Ctrl-D at an empty prompt\) to the question"
    ):
        await asyncio.wait_for(third, WAIT)
    fourth = asyncio.create_task(channel.ask(question(4)))
    await prompts(shown, 4)
    os.write(keyboard, CTRL_D)  # again: still only this question (a Ctrl-D ended the last)
    with pytest.raises(UserInputError, match="question 'run:token:q4'"):
        await asyncio.wait_for(fourth, WAIT)
    fifth = asyncio.create_task(channel.ask(question(5)))
    await prompts(shown, 5)
    os.write(keyboard, b"still here\n")  # the keyboard never ends the input
    assert await asyncio.wait_for(fifth, WAIT) == "still here"


async def test_ctrl_d_at_a_follow_up_offer_ends_the_conversation(pty: tuple[int, int]) -> None:
    read, keyboard = pty
    shown = io.StringIO()
    channel = TerminalChannel(read, shown)
    offer = Question(
        "run:token:f1", "run", "b0", "Tutor", "Any follow-up?", "follow_up", None, "Done\x07."
    )
    asked = asyncio.create_task(channel.ask(offer))
    await prompts(shown, 1)
    assert "Done\\x07." in shown.getvalue()  # the round's response, shown as text
    assert "? Follow-up (f1)" in shown.getvalue()
    os.write(keyboard, CTRL_D)
    assert await asyncio.wait_for(asked, WAIT) is None


async def test_one_ctrl_d_after_some_text_sends_it(pty: tuple[int, int]) -> None:
    """Text typed and then one Ctrl-D reached the program with no newline, and the answer
    waited for a second Ctrl-D."""
    read, keyboard = pty
    shown = io.StringIO()
    channel = TerminalChannel(read, shown)
    answer = asyncio.create_task(channel.ask(question(1)))
    await prompts(shown, 1)
    os.write(keyboard, b"no newline" + CTRL_D)
    assert await asyncio.wait_for(answer, WAIT) == "no newline"


def test_input_dropped_for_a_timed_out_question_stays_dropped_in_a_later_event_loop(
    pipe: tuple[int, int],
) -> None:
    """The reader was made again for each event loop, so a second ``asyncio.run`` forgot that
    what was typed for a question that timed out in the first must not answer the next."""
    read, write = pipe
    shown = io.StringIO()
    channel = TerminalChannel(read, shown)

    async def timed_out() -> None:
        with pytest.raises(TimeoutError):
            await channel.ask_within(question(1), 0.01, "the branch fails")

    asyncio.run(timed_out())
    os.write(write, b"typed too late\n")

    async def next_one() -> str:
        answer = asyncio.create_task(channel.ask(question(2)))
        await prompts(shown, 2)
        os.write(write, b"the real answer\n")
        return await asyncio.wait_for(answer, WAIT)

    assert asyncio.run(next_one()) == "the real answer"


async def test_a_question_withdrawn_on_screen_is_said_so_with_the_next(
    pipe: tuple[int, int],
) -> None:
    """A question withdrawn while shown (its branch cancelled) left no word on screen, and what
    the user typed next vanished unexplained."""
    read, write = pipe
    shown = io.StringIO()
    channel = TerminalChannel(read, shown)
    first = asyncio.create_task(channel.ask(question(1)))
    await prompts(shown, 1)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    second = asyncio.create_task(channel.ask(question(2)))
    await prompts(shown, 2)
    assert "question q1 was withdrawn; what was typed for it is not taken" in shown.getvalue()
    os.write(write, b"two\n")
    assert await asyncio.wait_for(second, WAIT) == "two"


async def test_input_typed_for_a_timed_out_question_never_answers_the_next(
    pipe: tuple[int, int],
) -> None:
    read, write = pipe
    shown = io.StringIO()
    channel = TerminalChannel(read, shown, user_timeout=0.05)
    manager = CommunicationManager(channel, on_user_timeout="default", default_answer="skip")
    os.write(write, b'"""\nDelete only the staging DB\n')  # a block begun, not ended in time
    told = await asyncio.wait_for(manager.ask(question(1)), WAIT)
    assert told.startswith("(The user did not answer within 0.05s")
    assert "(no answer to question q1 within 0.05s: the agent goes on with the default" in (
        shown.getvalue()
    )
    os.write(write, b'and keep backups\n"""\nno\n')  # the rest, typed after it expired
    channel.user_timeout = None
    second = asyncio.create_task(manager.ask(question(2, "Proceed with production?")))
    await prompts(shown, 2)
    os.write(write, b"fresh\n")
    assert await asyncio.wait_for(second, WAIT) == "fresh"


async def test_the_time_limit_counts_from_when_the_question_is_shown(
    pipe: tuple[int, int],
) -> None:
    """A question queued behind another is not timed out before it is shown."""
    read, write = pipe
    shown = io.StringIO()
    first = TerminalChannel(read, shown)
    second = TerminalChannel(read, shown, user_timeout=0.05)
    queued = CommunicationManager(second, on_user_timeout="default")
    answers = asyncio.create_task(CommunicationManager(first).ask(question(1)))
    later = asyncio.create_task(queued.ask(question(2)))
    await prompts(shown, 1)
    await asyncio.sleep(0.2)  # the clock runs past the limit while question 2 waits its turn
    assert not later.done()
    os.write(write, b"one\ntwo\n")
    assert await asyncio.wait_for(answers, WAIT) == "one"
    assert await asyncio.wait_for(later, WAIT) == "two"


async def test_two_channels_on_one_input_ask_one_at_a_time(pipe: tuple[int, int]) -> None:
    """Two runs' channels on one terminal share its reader and its turn: each line goes to the
    question on the screen, and a prompt counts the questions of both that wait."""
    read, write = pipe
    shown = io.StringIO()
    one, two = TerminalChannel(read, shown), TerminalChannel(read, shown)  # two runs
    a = asyncio.create_task(one.ask(question(1, agent="A")))
    await prompts(shown, 1)
    b = asyncio.create_task(two.ask(question(2, agent="B")))
    c = asyncio.create_task(one.ask(question(3, agent="C")))
    os.write(write, b"for A\n")
    assert await asyncio.wait_for(a, WAIT) == "for A"
    await prompts(shown, 2)
    assert shown.getvalue().count("asks (branch") == 2  # one question on the screen at a time
    assert "B asks (branch b2, question q2) (1 more waiting):" in shown.getvalue()
    os.write(write, b"for B\nfor C\n")
    assert await asyncio.wait_for(b, WAIT) == "for B"
    assert await asyncio.wait_for(c, WAIT) == "for C"


async def test_with_no_channel_the_error_says_what_to_do_on_the_command_line() -> None:
    with pytest.raises(UserInputError) as raised:
        await CommunicationManager().ask(question(1, "Colour?"))
    message = str(raised.value)
    assert "(question run:token:q1, branch b1)" in message
    assert "on the command line, run it on a terminal" in message
    assert "communication_config=CommunicationConfig(channel=...)" in message
