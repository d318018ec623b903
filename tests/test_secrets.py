"""API keys never leave the process in clear text.

A server that echoes the key it was sent (in a 401 or 500 body, as a JSON error's message or
type, in a plain-text body) must not put it into anything a run leaves behind: ``result.error``,
the events, the trace, the status lines, or the durable session log. ``ModelConfig`` keeps its
key as a ``SecretStr`` and leaves it out of every dump. The servers are real HTTP servers on
loopback; the SDKs and adapters run unmodified.
"""

from __future__ import annotations

import copy
import io
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helpers
import pytest
from helpers import SOLO, ask, final, fn, llm, of
from hypothesis import given
from hypothesis import strategies as st
from servers import Scripted, ScriptedHTTPServer, free_port

from orchestra import (
    CommunicationConfig,
    ConditionError,
    ErrorHandlingConfig,
    FunctionModel,
    OrchestraResult,
    ScriptedModel,
    StatusConfig,
    Topology,
    tool,
)
from orchestra.communication.channels import Question
from orchestra.coordination.engine import events as ev
from orchestra.coordination.monitoring.status import StatusPrinter
from orchestra.coordination.state import FileStorageBackend, StateManager
from orchestra.coordination.topology.conditions import condition_holds
from orchestra.errors import ConfigurationError
from orchestra.models import Message, StepInfo, secrets
from orchestra.models.config import ModelConfig
from orchestra.models.secrets import REDACTED, redact, url_without_credentials

MODEL = "leaky-model"
WAIT = 60.0  # real sockets and the SDKs' first import: only a hang should reach it
RETRIES = ErrorHandlingConfig(max_retries=1, retry_initial_delay=0, retry_max_delay=0)
# One key shaped like a provider's, one shaped like nothing: only knowing it can hide it.
KEYS = ["sk-proj-Zq81xLEAKEDkeyW4uTb3", "plain-team-token-0c9e6a41d7"]


def echoed(provider: str, status: int, key: str) -> list[Scripted]:
    """Error answers that repeat the key: as a JSON error's message and type, in a header,
    and in a body that is no JSON at all."""
    detail = {
        "message": f"Incorrect API key provided: {key}. Sent: Authorization: Bearer {key}",
        "type": f"invalid_request_error for {key}",
    }
    body = {"type": "error", "error": detail} if provider == "anthropic" else {"error": detail}
    headers = {"x-echo-api-key": key}
    plain = f"upstream refused x-api-key: {key} (Bearer {key})".encode()
    return [Scripted(status, body, headers), Scripted(status, plain, headers)]


def leaky_config(provider: str, server: ScriptedHTTPServer, key: str) -> ModelConfig:
    base_url = server.url + ("/v1" if provider == "openai" else "")
    return ModelConfig(provider=provider, name=MODEL, base_url=base_url, api_key=key)  # type: ignore[arg-type]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[StateManager]:
    """A file-backed store, uncompressed, so its bytes can be searched as they are."""
    storage = FileStorageBackend(tmp_path / "state")
    yield StateManager(storage, auto_save_interval=0, compression=False)
    storage.close()


async def failed_run(model: ModelConfig, store: StateManager) -> OrchestraResult:
    result = await helpers.run(
        "task",
        SOLO,
        [llm("Solo", model)],
        error_config=RETRIES,
        wait=WAIT,
        state_manager=store,
        context={"session_id": "leak"},
    )
    assert not result.success
    return result


def everything_left_behind(result: OrchestraResult, root: Path) -> str:
    """The result's error, every event (str and repr), the trace, the status lines at the
    most verbose level, and the raw bytes of every file of the store."""
    out = io.StringIO()
    printer = StatusPrinter(StatusConfig.from_verbosity(2), out)
    for event in result.events:
        printer(event)
    parts = [
        str(result.error),
        repr(result.metadata),
        *[f"{event}\n{event!r}" for event in result.events],
        repr(result.get_execution_trace()),
        out.getvalue(),
    ]
    files = [p.read_bytes().decode("latin-1") for p in sorted(root.rglob("*")) if p.is_file()]
    assert files, "the run kept no session"
    return "\n".join(parts + files)


@pytest.mark.parametrize("key", KEYS)
@pytest.mark.parametrize("status", [401, 500])
@pytest.mark.parametrize("provider", ["openai", "anthropic"])
async def test_a_key_the_server_echoes_is_redacted_everywhere_a_run_leaves_it(
    server: ScriptedHTTPServer,
    store: StateManager,
    tmp_path: Path,
    provider: str,
    status: int,
    key: str,
) -> None:
    json_error, plain_error = echoed(provider, status, key)
    for scripted in (json_error, plain_error):
        server.script(scripted, scripted)  # a 500 is retried once
        result = await failed_run(leaky_config(provider, server, key), store)
        assert f"HTTP {status}" in str(result.error)
        assert REDACTED in str(result.error) or scripted is plain_error  # an SDK may drop it
        left = everything_left_behind(result, tmp_path)
        assert key not in left
        assert "Bearer" not in left.replace(f"Bearer {REDACTED}", "")
        if status == 500:
            (retried,) = of(result, ev.ModelCallRetried)
            assert key not in retried.error
        server.requests.clear()


async def test_the_environment_key_is_redacted_too(
    server: ScriptedHTTPServer,
    store: StateManager,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    key = "env-held-secret-5f2b7c91"
    monkeypatch.setenv("OPENAI_API_KEY", key)
    model = ModelConfig(provider="openai", name=MODEL, base_url=server.url + "/v1")
    server.script(echoed("openai", 401, key)[0])
    result = await failed_run(model, store)
    assert key not in everything_left_behind(result, tmp_path)


async def test_credentials_in_an_unreachable_base_url_are_redacted(
    store: StateManager, tmp_path: Path
) -> None:
    url = f"http://team:hunter2-password@127.0.0.1:{free_port()}/v1"
    model = ModelConfig(provider="openai", name=MODEL, base_url=url, api_key="sk-unused-1234567")
    result = await failed_run(model, store)
    assert "cannot reach" in str(result.error)
    assert "hunter2-password" not in everything_left_behind(result, tmp_path)


async def test_a_model_api_error_keeps_no_sdk_exception_that_holds_the_request(
    server: ScriptedHTTPServer,
) -> None:
    """The SDK's exception holds the request, Authorization header included: the error the
    adapter raises has neither cause nor context, so no traceback or handler reaches it."""
    key = KEYS[0]
    server.script(echoed("openai", 401, key)[0])
    model = leaky_config("openai", server, key).build()
    info = StepInfo("Solo", "b0", 1, ("final_response",), (), (), True, False)
    with pytest.raises(Exception) as caught:
        await model.complete([Message("user", "hi")], info)
    assert caught.value.__cause__ is None and caught.value.__context__ is None
    assert key not in str(caught.value)


@pytest.mark.parametrize(
    ("text", "kept"),
    [
        ("key sk-ant-api03-AbCdEf0123456789_xyz was refused", "key [REDACTED] was refused"),
        ("bad key sk-proj-AbC_dEf-0123456789.", "bad key [REDACTED]."),
        ("Authorization: Bearer abc.def-ghi_123", "Authorization: Bearer [REDACTED]"),
        ("got x-api-key: not-a-pattern-key", "got x-api-key: [REDACTED]"),
        ('{"x-api-key": "quoted-key-1"}', '{"x-api-key": "[REDACTED]"}'),
        ("cannot reach https://me:pw@host/v1", "cannot reach https://[REDACTED]@host/v1"),
        (
            "at postgresql://h/db?sslpassword=k3y-pass&a=1",
            "at postgresql://h/db?sslpassword=[REDACTED]&a=1",
        ),
        ("ask-me-anything, task-42, risk-free", "ask-me-anything, task-42, risk-free"),
        ("HTTP 500: internal", "HTTP 500: internal"),
    ],
)
def test_common_key_patterns_are_redacted(text: str, kept: str) -> None:
    assert redact(text) == kept


@pytest.mark.parametrize(
    "key",
    [
        "ghp_" + "a1B2c3D4e5" * 4,
        "github_pat_11ABCDEFG0" + "x" * 40,
        "AKIAIOSFODNN7EXAMPLE",
        "xoxb-1234567890-abcdefghij",
        "sk-admin-" + "a1B2c3D4e5" * 3,
        "AIzaSyA" + "b" * 32,
        "hf_" + "Abcdefghij" * 3 + "kl",
        "sk-proj-" + "Z" * 40,  # a plain rest: the prefix alone says it is a key
        "sk-ant-api03-" + "a" * 30,
    ],
)
def test_keys_with_a_prefix_no_prose_has_are_redacted_however_plain(key: str) -> None:
    """GitHub, AWS, Slack, Google and Hugging Face tokens, and low-entropy ``sk-proj-`` keys,
    passed through (the inspector's review found them in a checkpoint name and a task)."""
    assert redact(f"token {key} leaked") == f"token {REDACTED} leaked"


@pytest.mark.parametrize(
    "prose",
    [
        "the ghp_ prefix",
        "AKIA is AWS's prefix",
        "hf_hub_download failed",
        "sk-proj-x",
        # words after the prefixes: slugs and names, not keys
        "see xoxo-gossip-girl-season-one-recap",
        "the sk-ant-colony-simulation-project repository",
        "sk-admin-dashboard-settings-page",
        "hf_hub_download_and_cache_the_model_files",
    ],
)
def test_the_prefixes_alone_are_prose(prose: str) -> None:
    assert redact(prose) == prose


@pytest.mark.parametrize(
    ("text", "kept"),
    [
        (
            "cannot reach http://127.0.0.1:9/v1?key=SECRETKEYVALUE123",
            "cannot reach http://127.0.0.1:9/v1?key=[REDACTED]",
        ),
        (
            "GET https://h/x?q=1&Access_Token=abc.def&api-version=2 -> 403",
            "GET https://h/x?q=1&Access_Token=[REDACTED]&api-version=2 -> 403",
        ),
        (
            "https://h/?apikey=a&sig=b&signature=c&password=d&secret=e&client_secret=f&token=g",
            "https://h/?apikey=[REDACTED]&sig=[REDACTED]&signature=[REDACTED]"
            "&password=[REDACTED]&secret=[REDACTED]&client_secret=[REDACTED]&token=[REDACTED]",
        ),
        ("Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2ln", "Bearer [REDACTED]"),
        ("bearer 550e8400-e29b-41d4-a716-446655440000 expired", "bearer [REDACTED] expired"),
        ("old key sk-" + "Ab3" * 16 + " revoked", "old key [REDACTED] revoked"),
        ("deepseek key sk-" + "0123456789abcdef" * 2, "deepseek key [REDACTED]"),
        # ordinary text around the same words is kept
        ("Invalid bearer token provided", "Invalid bearer token provided"),
        ("Bearer authentication required", "Bearer authentication required"),
        ("model sk-learn-regression-v2 not found", "model sk-learn-regression-v2 not found"),
        (
            "model sk-learn-Regression-model-v12 not found",
            "model sk-learn-Regression-model-v12 not found",
        ),
        (
            "see https://docs.example/keys?topic=rotation",
            "see https://docs.example/keys?topic=rotation",
        ),
        # prose a tool's or a step's error may hold, now that their text is redacted too
        ("api_key: field required", "api_key: field required"),
        ("authorization: denied for user bob", "authorization: denied for user bob"),
        ("config api_key=None", "config api_key=None"),
        ("list?page_token=CAUQAA&sort_key=name", "list?page_token=CAUQAA&sort_key=name"),
        ("clone ssh://git@github.com/org/repo", "clone ssh://git@github.com/org/repo"),
        ("api_key=9f2c6e0d71ab", "api_key=[REDACTED]"),
        ("Authorization: Basic dXNlcjpwYXNz", "Authorization: Basic [REDACTED]"),
        (
            "clone https://ghp_a1B2c3D4e5F6g7H8i9J0@github.com/org/repo",
            "clone https://[REDACTED]@github.com/org/repo",
        ),
    ],
)
def test_key_shapes_are_redacted_and_prose_around_them_is_not(text: str, kept: str) -> None:
    """A ``base_url``'s query credentials were kept; "Invalid bearer token provided" and
    "model sk-learn-regression-v2 not found" lost their words to ``[REDACTED]``."""
    assert redact(text) == kept


_PROSE = st.lists(
    st.sampled_from(
        [
            "invalid",
            "bearer",
            "Bearer",
            "token",
            "provided",
            "the",
            "model",
            "sk",
            "key",
            "api",
            "not",
            "found",
            "expired",
            "authorization",
            "failed",
            "for",
            "request",
            "learn",
            "regression",
            "v2",
            "rate",
            "limit",
            "Please",
            "retry",
        ]
    ),
    max_size=12,
).map(" ".join)


@given(_PROSE)
def test_english_error_text_is_never_changed(text: str) -> None:
    assert redact(text) == text


_TOKEN_CHARS = st.sampled_from("ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz0123456789")


@given(
    st.lists(_TOKEN_CHARS, min_size=40, max_size=90)
    .map("".join)
    .filter(lambda k: any(c.isdigit() for c in k)),
    st.sampled_from(["sk-", "sk-proj-", "sk-ant-api03-", "Bearer ", "Authorization: Bearer "]),
)
def test_keys_of_the_real_shapes_are_redacted(body: str, prefix: str) -> None:
    assert body not in redact(f"refused {prefix}{body}: try again")


def test_a_configured_key_is_redacted_however_it_is_shaped() -> None:
    secrets.remember("Zq!9 odd key")
    assert redact("echo: Zq!9 odd key.") == f"echo: {REDACTED}."
    assert redact("nothing here") == "nothing here"


# ---- ModelConfig ---------------------------------------------------------------------------

KEY = "sk-proj-ConfigKey0123456789"


def test_model_config_takes_a_plain_str_and_gives_it_back_only_on_request() -> None:
    config = ModelConfig(provider="openai", name="gpt-4o-mini", api_key=KEY)
    assert config.api_key is not None
    assert config.api_key.get_secret_value() == KEY
    assert config.resolved_api_key() == KEY
    assert (
        ModelConfig.model_validate({"provider": "openai", "name": "gpt-4o-mini", "api_key": KEY})
        == config
    )


@pytest.mark.parametrize(
    "view",
    [
        str,
        repr,
        lambda c: f"{c}",
        lambda c: repr(c.api_key),
        lambda c: str(c.api_key),
        lambda c: repr(c.model_dump()),
        lambda c: repr(c.model_dump(mode="json")),
        lambda c: c.model_dump_json(),
        lambda c: repr(copy.copy(c)),
        lambda c: repr(copy.deepcopy(c)),
        lambda c: repr(c.model_copy(update={"temperature": 0.5})),
        lambda c: repr(c.build()),
    ],
)
def test_no_view_of_a_model_config_shows_its_key(view: Any) -> None:
    config = ModelConfig(provider="openai", name="gpt-4o-mini", base_url="http://h/v1", api_key=KEY)
    assert KEY not in view(config)


def test_a_dump_leaves_the_key_out_so_validating_it_again_takes_none() -> None:
    """A dump written somewhere and read back falls back to the environment's key (or a clear
    ConfigurationError), never to a masked placeholder sent as if it were the key."""
    config = ModelConfig(provider="anthropic", name="claude", api_key=KEY)
    assert "api_key" not in config.model_dump()
    assert "api_key" not in config.model_dump(mode="json")
    again = ModelConfig.model_validate_json(config.model_dump_json())
    assert again.api_key is None
    assert again == config.model_copy(update={"api_key": None})


def test_copies_keep_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    config = ModelConfig(provider="openai", name="m", api_key=KEY)
    for copied in (copy.copy(config), copy.deepcopy(config), config.model_copy()):
        assert copied.resolved_api_key() == KEY


def test_whitespace_around_a_key_is_dropped_and_a_control_character_in_it_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A key read from a file kept its newline: httpx refused the header, and the call was
    retried as if the server could not be reached."""
    assert ModelConfig(provider="openai", name="m", api_key=KEY + "\n").resolved_api_key() == KEY
    monkeypatch.setenv("ANTHROPIC_API_KEY", f"  {KEY}\r\n")
    assert ModelConfig(provider="anthropic", name="m").resolved_api_key() == KEY
    broken = ModelConfig(provider="openai", name="m", api_key=KEY[:8] + "\n" + KEY[8:])
    with pytest.raises(ConfigurationError, match="control character") as info:
        broken.resolved_api_key()
    assert KEY[8:] not in str(info.value) and KEY[:8] not in str(info.value)


# ---- keys in the errors of user code ------------------------------------------------------


@pytest.fixture(params=KEYS)
def known_key(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """A key an adapter was built with, from the environment: remembered for redaction."""
    monkeypatch.setenv("OPENAI_API_KEY", request.param)
    ModelConfig(provider="openai", name=MODEL).build()
    return str(request.param)


async def test_a_key_in_a_tool_error_reaches_neither_the_model_nor_the_log(
    known_key: str, store: StateManager, tmp_path: Path
) -> None:
    """A tool's exception text is what the model sees and what the log keeps: it held the key."""

    @tool
    def search(q: str) -> str:
        """Search the web."""
        raise RuntimeError(f"GET https://api.example.com/s?q={q} with {known_key} -> 403")

    shown: list[str] = []

    def decide(messages: list[Message], info: StepInfo) -> dict[str, Any]:
        if messages[-1].role == "tool":
            shown.append(messages[-1].content)
            return final("done")
        return {
            "next_action": "call_tool",
            "action_input": [{"name": "search", "arguments": {"q": "x"}}],
        }

    result = await helpers.run(
        "task",
        SOLO,
        [llm("Solo", FunctionModel(decide), tools=[search])],
        state_manager=store,
        context={"session_id": "tool"},
    )
    assert result.success, result.error
    assert shown == [
        f"error: RuntimeError: GET https://api.example.com/s?q=x with {REDACTED} -> 403"
    ]
    assert known_key not in everything_left_behind(result, tmp_path)


async def test_a_key_in_a_step_error_is_redacted_everywhere_a_run_leaves_it(
    known_key: str, store: StateManager, tmp_path: Path
) -> None:
    def step(value: Any, context: Any) -> Any:
        raise PermissionError(f"upstream refused key {known_key}")

    result = await helpers.run(
        "task", SOLO, [fn("Solo", step)], state_manager=store, context={"session_id": "step"}
    )
    assert result.error == f"agent 'Solo' raised PermissionError: upstream refused key {REDACTED}"
    assert known_key not in everything_left_behind(result, tmp_path)


async def test_a_key_in_a_user_channel_error_is_redacted(known_key: str) -> None:
    class Broken:
        async def ask(self, question: Question) -> Any:
            raise ConnectionError(f"UI refused token {known_key}")

    result = await helpers.run(
        "task",
        Topology(nodes=["Solo"], edges=["Solo -> User"]),
        [llm("Solo", ScriptedModel([ask("which one?")]))],
        communication_config=CommunicationConfig(channel=Broken()),
    )
    assert result.error is not None and result.error.endswith(f"UI refused token {REDACTED}")
    assert known_key not in "".join(f"{event!r}" for event in result.events)


def test_a_key_in_an_edge_condition_error_is_redacted(known_key: str) -> None:
    def check(payload: Any, context: Any) -> bool:
        raise KeyError(f"no entry for {known_key}")

    with pytest.raises(ConditionError) as info:
        condition_holds(check, "x", {}, "A -> B")
    assert known_key not in str(info.value) and REDACTED in str(info.value)


# ---- base_url credentials in views of a ModelConfig ------------------------------------------

CREDENTIAL_URL = (
    "https://bob:sk-proj-SECRETpass0123456789@proxy.example/v1?api-version=2&key=Q1w2E3"
)


@pytest.mark.parametrize(
    "view",
    [
        repr,
        str,
        lambda c: repr(c.build()),
        lambda c: repr(llm("A", c.build())),
        lambda c: c.model_dump_json(),
        lambda c: repr(c.model_dump()),
    ],
    ids=["repr", "str", "adapter", "agent", "dump-json", "dump"],
)
def test_no_view_of_a_model_config_shows_base_url_credentials(view: Any) -> None:
    config = ModelConfig(provider="openai", name="m", base_url=CREDENTIAL_URL, api_key=KEY)
    shown = view(config)
    assert "bob" not in shown and "SECRETpass" not in shown and "Q1w2E3" not in shown
    assert "proxy.example/v1" in shown and "api-version=2" in shown


def test_reprs_mask_base_url_credentials_and_dumps_leave_them_out() -> None:
    """A dump read back sends no placeholder as a credential; the config itself keeps them."""
    config = ModelConfig(provider="openai", name="m", base_url=CREDENTIAL_URL, api_key=KEY)
    assert "base_url='https://[REDACTED]@proxy.example/v1?api-version=2&key=[REDACTED]'" in repr(
        config
    )
    assert config.model_dump()["base_url"] == "https://proxy.example/v1?api-version=2"
    assert config.base_url == CREDENTIAL_URL


def test_a_url_keeps_no_parameter_named_as_a_password() -> None:
    """PostgreSQL's ``sslpassword`` (a client key's passphrase) and any other ``...password``
    are left out, as ``password`` is; a parameter that merely holds the word is kept."""
    url = "postgresql://db:5432/app?sslpassword=a&password=b&PGPASSWORD=c&password_hint=d&x=e"
    assert url_without_credentials(url) == "postgresql://db:5432/app?password_hint=d&x=e"


@pytest.mark.parametrize("unit", ["sk-", "a-", "a.", "x://", "&a_", "Bearer a"])
def test_redacting_takes_time_in_proportion_to_the_text(unit: str) -> None:
    """An unbounded URL scheme was tried from every word of "sk-sk-sk-..." to its end: 240 KB
    of it, the text of an exception a tool raised, took 73 s, with the event loop held. Now a
    few hundredths of a second; the bound only catches the quadratic case."""
    text = unit * (240_000 // len(unit))
    done = threading.Event()
    worker = threading.Thread(target=lambda: (redact(text), done.set()), daemon=True)
    worker.start()
    assert done.wait(30), f"redacting {len(text):,} characters of {unit!r} took over 30 s"
