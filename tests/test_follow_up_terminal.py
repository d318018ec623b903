"""Follow-ups on the command line: the offer shows the whole response and how long there is to
answer; ``--output`` keeps every round; a run or a resume whose standard input is closed, or no
terminal, has no channel (follow-ups not offered, said once, never a traceback).
"""

from __future__ import annotations

import asyncio
import io
import os
import subprocess
import sys
from pathlib import Path

from helpers import TESTS, run_cli
from test_terminal_channel import FOLLOW_UP, FOLLOW_UP_FLOW, WAIT, ended, flow, spawn

from orchestra import TerminalChannel
from orchestra.communication import CommunicationManager, Question

LONG_FLOW = """\
agents: [{name: Tutor, function: 'terminal_nodes:long_tutor'}]
topology: {nodes: [User, Tutor], edges: [User -> Tutor, Tutor -> User]}
task: explain
"""
NOT_OFFERED = "Follow-ups are not offered: standard input (or the screen) is no terminal."


def test_the_offer_shows_the_whole_response_and_output_keeps_every_round(tmp_path: Path) -> None:
    flow(tmp_path, LONG_FLOW)
    args = ["--quiet", "--no-store", "--follow-ups", "--follow-up-timeout", "120"]
    child = spawn(tmp_path, "run", "flow.yaml", *args, "--output", "out.txt")
    child.expect(FOLLOW_UP)
    assert "END-OF explain" in child.before  # the round's response, not cut
    assert "more characters" not in child.before
    child.expect("> ")
    assert "(120 s to answer)" in child.before
    child.sendline("and more?")
    child.expect(FOLLOW_UP)
    child.expect("> ")
    child.sendline("")
    output, code = ended(child)

    assert code == 0, output
    assert "Final response (round 2 of 2)" in output
    assert "The whole conversation (2 rounds) (10,151 characters) is in out.txt" in output
    saved = (tmp_path / "out.txt").read_text()
    x = "x" * 5_000
    assert saved == (
        "# Round 1: question\n\nexplain\n\n"
        f"# Round 1: response\n\nSTART {x} END-OF explain\n\n"
        "# Round 2: question\n\nand more?\n\n"
        f"# Round 2: response\n\nSTART {x} END-OF and more?\n"
    )


async def test_an_offer_says_its_time_limit_and_why_the_conversation_ended() -> None:
    read, keyboard = os.pipe()
    shown = io.StringIO()
    offer = Question("run:token:f1", "run", "b0", "Tutor", "Any?", "follow_up", 0.05, "Done.")
    try:
        answer = await asyncio.wait_for(
            CommunicationManager(TerminalChannel(read, shown)).ask(offer), WAIT
        )
    finally:
        os.close(read)
        os.close(keyboard)

    assert answer is None
    text = shown.getvalue()
    assert "to finish (0.05 s to answer)" in text
    assert "(the conversation ended: no follow-up came within 0.05 s;" in text


def closed_input(*argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``argv`` run with its standard input closed (``sys.stdin`` is None in it)."""
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(Path.home()),
        "PYTHONPATH": os.pathsep.join((str(TESTS.parent), str(TESTS))),
    }
    return subprocess.run(
        ["sh", "-c", 'exec "$@" <&-', "sh", *argv],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        env=env,
    )


LIBRARY = """\
import asyncio, sys
from helpers import fn, quiet
from orchestra import AgentRegistry
from orchestra.coordination.orchestra import Orchestra, OrchestraInstance

assert sys.stdin is None
SOLO = {"nodes": ["User", "Tutor"], "edges": ["User -> Tutor", "Tutor -> User"]}
registry = AgentRegistry([fn("Tutor", lambda value, context: "because")])
result = asyncio.run(Orchestra.run("explain", SOLO, agent_registry=registry,
                                   execution_config=quiet()))
instance = OrchestraInstance(SOLO, agent_registry=registry)
print(result.success, result.final_response, instance.communication.channel)
"""


def test_a_library_run_with_its_input_closed_has_no_channel(tmp_path: Path) -> None:
    done = closed_input(sys.executable, "-c", LIBRARY, cwd=tmp_path)

    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "True because None"


def test_the_command_line_with_its_input_closed_does_not_offer_follow_ups(tmp_path: Path) -> None:
    flow(tmp_path, FOLLOW_UP_FLOW)
    args = ["run", "flow.yaml", "--quiet", "--no-store", "--follow-ups"]
    done = closed_input(sys.executable, "-m", "orchestra", *args, cwd=tmp_path)

    assert done.returncode == 0, done.stdout + done.stderr
    assert NOT_OFFERED in done.stdout
    assert "Tutor on explain" in done.stdout
    assert "Traceback" not in done.stderr


def test_a_resume_with_no_terminal_says_follow_ups_are_not_offered(tmp_path: Path) -> None:
    flow(tmp_path, FOLLOW_UP_FLOW)
    child = spawn(tmp_path, "run", "flow.yaml", "--quiet", "--follow-ups")
    child.expect(r"Session (\w+), kept in")
    session = child.match.group(1)
    child.expect(FOLLOW_UP)
    child.expect("> ")
    child.sendintr()
    output, code = ended(child)
    assert code == 130, output

    resumed = run_cli("resume", "flow.yaml", session, "--quiet", cwd=tmp_path)

    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert resumed.stdout.count(NOT_OFFERED) == 1
    assert "Tutor on explain" in resumed.stdout
    assert "UserWarning" not in resumed.stderr
