"""What the Temporal client, the session workflow and its activities say to each other: names
and payload shapes, all plain JSON (no object serialization: a payload is data, read by explicit
rules). Values a session stores cross as its log stores them (``state/records.py``,
``state/codec.py``, ``state/values.py``): what a session log can hold can cross, and nothing
else.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any, Literal, NotRequired, TypedDict

import msgspec
import zstandard

from orchestra.agents.contract import StepInput
from orchestra.communication.channels import TimedChannel
from orchestra.coordination.config import ErrorHandlingConfig
from orchestra.coordination.engine import inputs as inp
from orchestra.coordination.execution import storable_start
from orchestra.coordination.state import records
from orchestra.coordination.state.codec import shape
from orchestra.coordination.wiring import Setup, first_input, topology_fingerprint
from orchestra.errors import ConfigurationError
from orchestra.models.base import Message, StepInfo

from .hosting import version_of

WORKFLOW_NAME = "orchestra.session"
"""The workflow type of a session; its workflow id is the session id."""

STEP_ACTIVITY = "orchestra.step"
TOOL_ACTIVITY = "orchestra.tool"
MIRROR_ACTIVITY = "orchestra.mirror"

RECORDS_QUERY = "records"
QUESTIONS_QUERY = "questions"
QUESTION_QUERY = "question"
ANSWER_UPDATE = "answer"
PAUSE_SIGNAL = "pause"
RESUME_SIGNAL = "resume"
CHECKPOINT_UPDATE = "checkpoint"
RESTORE_UPDATE = "restore"
RESUME_UPDATE = "resume_kept"
CLAIM_UPDATE = "claim"
"""A following client whose channel owns the time limit (a ``TimedChannel``) claims each
question it shows (``claim(question_id, True)``: whether it is still open) and releases its
claims when it goes away (``claim(question_id, False)``); a question no client holds a claim
on is timed out by the workflow at its limit, as embedded."""
"""The ``resume`` signal as an update answering whether the workflow kept it (paused, or
pausing): what a client sends with additional context to a session that may be running."""

NOT_PAUSED = "SessionRunningError"
"""The type of the failure of a ``restore`` update sent to a session that is not paused."""

CLOSED = "SessionClosed"
"""The type of the failure of a ``checkpoint`` update sent to a run that finished meanwhile."""

PAGE_BYTES = 1_000_000
QUESTION_BYTES = PAGE_BYTES // 4
"""Of a records page, what its open questions may take whole: the ones past it are listed
without their text (``OpenQuestion.parted``), which the follower reads in parts."""
"""The most bytes of records one ``records`` query answers, counted as they cross: each line
JSON-encoded again (``json.dumps``, ASCII only, as temporalio encodes the answer), where a
non-ASCII character takes 6 bytes and a quote 2. A query's answer is a Temporal payload, which
the server bounds at 2 MiB; it may ride on a workflow task's completion, which gRPC bounds at
4 MiB with the activities the task schedules (``seams.TASK_BYTES``). A line longer than a page
crosses in parts (``RecordsPage``)."""

PAYLOAD_LIMIT = 1_900_000
"""The most bytes a step's or a tool's packed payload (``pack``) may have: Temporal refuses a
payload over 2 MiB (2,097,152 bytes), and the rest is headroom for its envelope."""

_UNPACKED_LIMIT = 256 * 1024 * 1024
"""The most bytes a packed payload may expand to: more is refused, never allocated."""

State = Literal["running", "paused", "finished"]


def pack(payload: dict[str, Any]) -> bytes:
    """A step's or tool's payload as it crosses: its JSON, compressed with zstandard, so a
    conversation shipped with every step costs its history (and the 2 MiB payload limit) a
    fraction of its text. Deterministic: the same payload packs to the same bytes on replay.
    Bytes inside our protocol, not a data converter: a user's own ``Client`` keeps its own."""
    text = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    return zstandard.ZstdCompressor(level=3).compress(text.encode())


def unpack(data: bytes) -> dict[str, Any]:
    """A payload ``pack`` made (``ValueError`` when it is not one: bad frame, too big to expand,
    not a JSON object)."""
    try:
        size = zstandard.frame_content_size(data)
        if size < 0 or size > _UNPACKED_LIMIT:
            raise ValueError(f"a packed payload that would expand to {size} bytes")
        payload = json.loads(zstandard.ZstdDecompressor().decompress(data))
    except zstandard.ZstdError as error:
        raise ValueError(f"a packed payload that cannot be read ({error})") from None
    if not isinstance(payload, dict):
        raise ValueError("a packed payload that is not a JSON object")
    return payload


@dataclass
class Communication:
    """The client's user-channel settings, which the workflow's communication manager applies
    (its timeouts are workflow timers: deterministic). ``has_channel``: whether anyone answers
    questions (without, an agent's question fails its branch, as embedded);
    ``user_timeout_source`` where ``user_timeout`` was set, for a timed-out question's error
    (None: the configuration's key)."""

    user_timeout: float | None
    on_user_timeout: Literal["fail", "default"]
    default_answer: str
    has_channel: bool
    user_timeout_source: str | None = None
    client_timed: bool = False
    """The client's channel applies the limit itself (a ``TimedChannel``: the terminal counts
    it from when its user sees the question, one at a time): the client reports a timeout
    with the ``answer`` update (``timed_out``), and the workflow keeps only a backstop timer
    (``CLIENT_LIMIT_BACKSTOP`` past the limit) for a client that went away. That holds for
    a question such a client claimed (``CLAIM_UPDATE``): one that no client claimed within
    its limit (the terminal went away, or a plain channel follows) is timed out by the
    workflow at the limit."""


CLIENT_LIMIT_BACKSTOP = 3600.0
CLAIM_GRACE = 5.0
"""Seconds past a question's limit that the workflow of a session followed by a client whose
channel owns the limit waits for its claim before it times the question out itself: room for
the claim to arrive under load, so that client's own timing (from when it shows the question)
decides, as embedded."""
"""Seconds past a question's limit after which the workflow times it out itself when the
client's channel owns the limit (``Communication.client_timed``) and reported nothing: room
for the questions queued before it on the client's screen, and for a client that went away
to be followed again."""


@dataclass
class StartInput:
    """A session workflow's input. ``header`` is the run's first record (``RunStart``) as its
    log line: the workflow feeds it as it is. ``version`` (``version_of``) says which hosted
    workflow runs it; ``fingerprint`` is its topology's, for the error that says what changed
    when a worker does not host it. ``base`` is how many records the session's log held
    before this workflow run's journal (its earlier runs' records: a run that goes on from a
    closed one carries that one's base with its journal), so a default checkpoint name counts
    the session's records, as embedded, not this run's."""

    version: str
    fingerprint: list[str]
    header: str
    communication: Communication
    heartbeat_timeout: float
    continuation: Continuation | None = None
    base: int = 0


@dataclass
class Continuation:
    """What a new run of a session whose workflow closed goes on from: the closed run's
    journal (``journal``: its lines, ``pack_lines``), then either a checkpoint named
    ``checkpoint`` at its end (``restore`` False: the run journals it and closes at once) or a
    restore to the checkpoint whose id is ``checkpoint`` (the run journals the restore and
    waits, paused, for a ``resume``). A closed workflow is never reopened: its journal is
    carried to the next run of the same workflow id."""

    journal: str
    checkpoint: str
    restore: bool


def pack_lines(lines: list[str], session_id: str) -> str:
    """A journal's lines as they cross in a ``Continuation``: packed (``pack``) and base64,
    so the start input stays JSON. ``ConfigurationError`` naming the session when they do not
    fit in one Temporal payload."""
    packed = pack({"lines": lines})
    if len(packed) > PAYLOAD_LIMIT:
        raise ConfigurationError(
            f"session {session_id!r}: its journal is {len(packed)} bytes packed, over the "
            f"{PAYLOAD_LIMIT} a Temporal payload may carry: its closed run cannot go on in a "
            "new run of its workflow (no checkpoint taken, nothing restored)"
        )
    return base64.b64encode(packed).decode("ascii")


def unpack_lines(text: str) -> list[str]:
    """The lines ``pack_lines`` packed (``ValueError`` when it did not)."""
    try:
        lines = unpack(base64.b64decode(text, validate=True)).get("lines")
    except binascii.Error as error:
        raise ValueError(f"a packed journal that is no base64 ({error})") from None
    if not isinstance(lines, list) or not all(isinstance(line, str) for line in lines):
        raise ValueError("a packed journal whose lines are not a list of strings")
    return lines


class OpenQuestion(TypedDict):
    """One open question, as the ``questions`` query lists it. ``response_line``: a follow-up
    offer's response as JSON text of its plain form (``values.to_plain``), else None.
    ``parted``: a records page lists it without its text and response (they did not fit its
    share, ``QUESTION_BYTES``); the ``question`` query gives it whole, in parts."""

    id: str
    branch_id: str
    agent: str
    text: str
    kind: Literal["agent", "budget", "follow_up"]
    timeout: float | None
    response_line: str | None
    parted: NotRequired[bool]


class QuestionPart(TypedDict):
    """The ``question(question_id, offset)`` query's answer: the open question's JSON text
    (``json.dumps`` of its ``OpenQuestion``) from ``offset`` on, as many characters as fit a
    page, and ``offset``, where the next part starts (0 after the last); ``open`` False, and
    nothing else, once the question is no longer open."""

    open: bool
    part: str
    offset: int


class RecordsPage(TypedDict):
    """The ``records(since, offset=0)`` query's answer: the journal's lines from index
    ``since`` (0-based) on, ``next`` the index to ask from next time, where the workflow
    stands, and its open questions (what the ``questions`` query lists: one query a round
    follows a session).

    A line too long for a page (a large tool result, a fan-out of a large document) crosses
    in parts, so a session log holds nothing a client cannot read: the answer then has no
    ``lines`` but ``part``, the line's characters from ``offset`` on (as many as fit), and
    ``offset``, where its next part starts (asked for with the same ``since``). The last part
    has ``next = since + 1`` and ``offset`` 0; the reader joins the parts into the line. A
    reader that never passes ``offset`` gets whole lines as long as they fit a page."""

    lines: list[str]
    next: int
    state: State
    questions: list[OpenQuestion]
    part: NotRequired[str]
    offset: NotRequired[int]


def records_page(
    journal: list[str], since: int, offset: int, state: State, questions: list[OpenQuestion]
) -> RecordsPage:
    """The ``records`` query's answer over ``journal`` (see ``RecordsPage``): whole lines from
    ``since`` while they fit ``PAGE_BYTES``, or a part of the line at ``since`` when it alone
    does not (or ``offset`` asks for its next part)."""
    start = max(since, 0)
    listed = bounded(questions)
    budget = PAGE_BYTES - encoded_size(listed)
    page = RecordsPage(lines=[], next=start, state=state, questions=listed)
    size = 0
    for line in journal[start:] if offset <= 0 else ():
        line_size = encoded_size(line)
        if size + line_size > budget:
            break
        page["lines"].append(line)
        size += line_size
    page["next"] = start + len(page["lines"])
    if page["lines"] or start >= len(journal):
        return page
    line = journal[start]
    begin = max(offset, 0)
    end = begin + _fitting_chars(line, begin, budget)
    page["part"], page["offset"] = line[begin:end], end
    if end >= len(line):
        page["next"], page["offset"] = start + 1, 0
    return page


def bounded(questions: list[OpenQuestion]) -> list[OpenQuestion]:
    """The open questions as a records page lists them: whole while they fit
    ``QUESTION_BYTES``, the rest without their text and response (``parted``), so a page
    always fits however large the questions are."""
    listed: list[OpenQuestion] = []
    size = 0
    for question in questions:
        size += encoded_size(question)
        if size > QUESTION_BYTES:
            question = OpenQuestion(
                id=question["id"],
                branch_id=question["branch_id"],
                agent=question["agent"],
                text="",
                kind=question["kind"],
                timeout=question["timeout"],
                response_line=None,
                parted=True,
            )
        listed.append(question)
    return listed


def question_part(questions: list[OpenQuestion], question_id: str, offset: int) -> QuestionPart:
    """The ``question`` query's answer over the open ``questions`` (see ``QuestionPart``)."""
    found = [question for question in questions if question["id"] == question_id]
    if not found:
        return QuestionPart(open=False, part="", offset=0)
    text = json.dumps(found[0])
    begin = max(offset, 0)
    end = begin + _fitting_chars(text, begin, PAGE_BYTES)
    return QuestionPart(open=True, part=text[begin:end], offset=end if end < len(text) else 0)


def _fitting_chars(line: str, begin: int, budget: int) -> int:
    """How many characters of ``line`` from ``begin`` on fit ``budget`` bytes as they cross
    (one at least, so every part moves on): from as many as the budget has bytes, fewer in
    proportion while they take more."""
    count = min(max(budget, 1), len(line) - begin)
    while count > 1:
        size = encoded_size(line[begin : begin + count])
        if size <= budget:
            break
        count = max(1, min(count - 1, count * budget // size))
    return count


def encoded_size(value: Any) -> int:
    """The bytes ``value`` takes in a query's answer (``json.dumps``, ASCII only, as
    temporalio encodes payloads)."""
    return len(json.dumps(value))


class Answer(TypedDict):
    """The ``answer`` update's argument: the answer in its plain form (``values.to_plain``),
    or ``error``, the text ``"<type>: <message>"`` of the client's channel failing, or
    ``timed_out`` (a client whose channel owns the limit: its user did not answer in time)."""

    question_id: str
    answer: Any
    error: str | None
    timed_out: NotRequired[bool]


class Outcome(TypedDict):
    """The workflow's result, returned once its run finished."""

    records: int
    state: State


@dataclass
class StepCall:
    """What of a ``StepRequest`` crosses to the step activity (the rest is the runner's)."""

    input: StepInput
    messages: list[Message]
    info: StepInfo
    context: dict[str, Any]
    retry: ErrorHandlingConfig | None = None


STEP_CALL = shape(StepCall)
MESSAGE = shape(Message)


def start_input(
    setup: Setup,
    task: Any,
    context: dict[str, Any],
    session_id: str,
    heartbeat_timeout: float,
    *,
    task_queue: str = "orchestra",
    namespace: str = "default",
) -> StartInput:
    """The input that starts session ``session_id`` as a workflow: its header recorded now, on
    the client, as an embedded run records it, marked as run on Temporal (``executor``: where,
    so the log a worker keeps never reads as an interrupted run to resume here). A task or
    context the log cannot store is a ``ConfigurationError`` naming the session, before
    anything starts."""
    where = {"kind": "temporal", "task_queue": task_queue, "namespace": namespace}
    first = msgspec.structs.replace(first_input(setup, task, context), executor=where)
    header = _header(first, session_id)
    return StartInput(
        version=version_of(setup),
        fingerprint=list(topology_fingerprint(setup.analysis)),
        header=header,
        communication=communication_of(setup),
        heartbeat_timeout=heartbeat_timeout,
    )


def checkpoint_name(name: str | None, base: int, journal_length: int) -> str:
    """The checkpoint's name: ``name``, or one made from its position in the session's log
    (the records before the workflow run, ``base``, and the run's journal), as embedded."""
    return name or f"checkpoint-{base + journal_length + 1}"


def communication_of(setup: Setup) -> Communication:
    """The client's user-channel settings, as the session's workflow applies them: sent when
    the session starts, and again with each ``resume`` (the resuming client's own, as an
    embedded resume uses the resuming instance's channel)."""
    manager = setup.communication
    return Communication(
        user_timeout=manager.timeout(),
        on_user_timeout=manager.on_user_timeout,
        default_answer=manager.default_answer,
        has_channel=manager.channel is not None,
        user_timeout_source=manager.timeout_source(),
        client_timed=isinstance(manager.channel, TimedChannel),
    )


def _header(first: inp.RunStart, session_id: str) -> str:
    with storable_start(session_id):
        line = records.encode(first, 1)
        records.check_size(line, session_id, 1)
    return line


def version_queue(task_queue: str, version: str) -> str:
    """The task queue of a hosted workflow version's sessions (their workflow tasks, steps and
    tool calls) on ``task_queue``: only workers hosting that version poll it, so old and new
    workers share a base queue safely during an upgrade, and a session no worker hosts any
    more waits there, with nothing taken from it, for one that does."""
    return f"{task_queue}@{version}"


def base_queue(queue: str) -> tuple[str, str]:
    """The base task queue and the version of a version's queue (``version_queue``)."""
    base, _, version = queue.rpartition("@")
    return base, version
