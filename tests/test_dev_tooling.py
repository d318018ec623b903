"""The test tooling around Phoenix (the tracing test's receiver): ``dev.py`` obeys the opt-outs,
and an install that fails neither stops the tests nor removes a working install; the test
services hand out distinct ports and reach loopback past an environment's HTTP proxy."""

from __future__ import annotations

import importlib.util
import subprocess
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import services
from servers import Scripted, ScriptedHTTPServer, free_ports

ROOT = Path(__file__).resolve().parent.parent


def load_dev() -> ModuleType:
    spec = importlib.util.spec_from_file_location("dev_script", ROOT / "dev.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def dev(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    module = load_dev()
    monkeypatch.setattr(module, "PHOENIX_VENV", tmp_path / "phoenix")
    monkeypatch.delenv(module.PHOENIX_VARIABLE, raising=False)
    monkeypatch.delenv(module.NO_PHOENIX_VARIABLE, raising=False)
    return module


def pip(monkeypatch: pytest.MonkeyPatch, fails: bool) -> list[list[str]]:
    """subprocess.run replaced: each command recorded; ``pip install`` fails if ``fails``."""
    commands: list[list[str]] = []

    def run(command: list[str], **options: Any) -> subprocess.CompletedProcess[str]:
        commands.append(command)
        if fails:
            raise subprocess.CalledProcessError(1, command)
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr(subprocess, "run", run)
    return commands


@pytest.mark.parametrize("variable", ["ORCHESTRA_NO_PHOENIX", "ORCHESTRA_PHOENIX"])
def test_the_opt_outs_install_nothing(
    dev: ModuleType, monkeypatch: pytest.MonkeyPatch, variable: str
) -> None:
    commands = pip(monkeypatch, fails=True)
    monkeypatch.setenv(variable, "1" if variable == dev.NO_PHOENIX_VARIABLE else "/my/phoenix")
    assert dev.ensure_phoenix() is None  # main then leaves ORCHESTRA_PHOENIX as it is
    assert commands == []


def test_a_failed_install_keeps_the_working_one_and_lets_the_tests_run(
    dev: ModuleType, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = dev.PHOENIX_VENV / "bin"
    folder.mkdir(parents=True)
    for program in ("python", "phoenix"):
        (folder / program).write_text("working")
    stamp = dev.PHOENIX_VENV / ".orchestra-install"
    stamp.write_text("arize-phoenix==0.0.1 (an older pin)")
    commands = pip(monkeypatch, fails=True)

    assert dev.ensure_phoenix() is None  # no exception: pytest still starts
    assert commands and commands[0][-2:] == ["install", dev.PHOENIX]
    assert (folder / "phoenix").read_text() == "working"
    assert stamp.read_text() == "arize-phoenix==0.0.1 (an older pin)"
    assert "ORCHESTRA_NO_PHOENIX=1" in capsys.readouterr().err

    pip(monkeypatch, fails=False)
    assert dev.ensure_phoenix() == folder / "phoenix"
    assert stamp.read_text().startswith(dev.PHOENIX)


def test_free_ports_are_distinct() -> None:
    ports = free_ports(20)
    assert len(set(ports)) == 20


def test_loopback_is_reached_past_an_http_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in ("http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(variable, "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    with ScriptedHTTPServer() as server:
        server.script(Scripted(200, {"ok": True}))
        with services.LOOPBACK.open(server.url + "/v1/ping", data=b"{}", timeout=10) as answer:
            assert answer.status == 200


def test_a_missing_chromium_is_installed_with_what_else_is_missing(
    dev: ModuleType, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The browser tests drive Debian's Chromium: installed (as root) like the servers, alone
    when they are there; without root, the message names the packages to install."""
    commands = pip(monkeypatch, fails=False)
    monkeypatch.setattr(dev, "CHROMIUM", tmp_path / "no-chromium")
    monkeypatch.setattr(dev.shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(dev.os, "geteuid", lambda: 0)
    dev.ensure_test_servers()
    assert commands[-1][-2:] == ["--no-install-recommends", "chromium"]
    monkeypatch.setattr(dev.os, "geteuid", lambda: 1000)
    with pytest.raises(SystemExit, match="apt-get install chromium"):
        dev.ensure_test_servers()
