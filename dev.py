"""The project's two entry points: ``python3 dev.py demo`` and ``python3 dev.py test``.

Standard library only, so it works on a fresh clone with nothing but Python 3.11+.
Each command makes sure ``.venv`` exists and holds the project (editable) with the
extras that command needs; the install is redone only when ``pyproject.toml`` changes,
so repeated runs start in well under a second.
"""

from __future__ import annotations

import glob
import hashlib
import os
import re
import shutil
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PYTHON = BIN / ("python.exe" if os.name == "nt" else "python")

WHEELS = (
    Path(os.environ.get("ORCHESTRA_WHEEL_CACHE", Path.home() / ".cache" / "orchestra" / "wheels"))
    / "portable"
)  # wheels of an earlier, machine-specific build (a sibling folder) are not reused
COMPILED = "llama-cpp-python"  # builds from source (minutes): its wheel is built once and kept
# llama.cpp tunes itself to the building CPU by default; such a build crashed (SIGSEGV) on a VM
# whose CPU lists instructions it does not grant, and its arithmetic, so the bundled model's
# greedy replies, differs from machine to machine. The portable build (AVX2 on x86-64) runs
# alike wherever it is built. A CMAKE_ARGS of your own (a GPU build, say) replaces this.
PORTABLE_BUILD = {"CMAKE_ARGS": "-DGGML_NATIVE=OFF"}

PHOENIX = "arize-phoenix==20.26.1"
"""The OTLP receiver the tracing test exports to and reads back from (``dev.py test`` only). It
is large (~860 MB) and pins its own dependencies, so it lives in a virtual environment of its
own, ``.venv/phoenix``, reinstalled only when this pin changes."""
PHOENIX_VENV = VENV / "phoenix"
PHOENIX_VARIABLE = "ORCHESTRA_PHOENIX"  # tests/services.py reads the binary's path from it
NO_PHOENIX_VARIABLE = "ORCHESTRA_NO_PHOENIX"  # "1": the tracing test skips on purpose

USAGE = """usage: python3 dev.py demo [ARGS...]   run the Orchestra demo
       python3 dev.py test [PYTEST ARGS...]   run the whole test suite"""


def _install_stamp(extras: str) -> str:
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes())
    digest.update(extras.encode())
    digest.update(sys.version.encode())
    return digest.hexdigest()


def ensure_environment(extras: str) -> None:
    """Create .venv and install the project into it unless an identical install is there."""
    if sys.version_info < (3, 11):  # noqa: UP036 - this script must run to say so
        sys.exit(f"Orchestra needs Python 3.11 or newer; this is {sys.version.split()[0]}.")
    if not PYTHON.exists():
        print(f"[dev] creating virtual environment in {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True, clear=True).create(VENV)
    stamp_file = VENV / ".orchestra-install"
    stamp = _install_stamp(extras)
    if stamp_file.exists() and stamp_file.read_text() == stamp:
        return
    target = f".[{extras}]" if extras else "."
    print(f"[dev] installing {target} into .venv", flush=True)
    pip = [str(PYTHON), "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "install", "--upgrade", "pip"], check=True, cwd=ROOT)
    build_compiled_wheel(pip)
    subprocess.run(
        [*pip, "install", "--find-links", str(WHEELS), "-e", target], check=True, cwd=ROOT
    )
    stamp_file.write_text(stamp)


def build_compiled_wheel(pip: list[str]) -> None:
    """Build the pinned llama-cpp-python wheel into the cache unless it is there already."""
    pin = _pinned(COMPILED)
    prefix = f"{COMPILED.replace('-', '_')}-{pin}-"
    if WHEELS.is_dir() and any(p.name.startswith(prefix) for p in WHEELS.glob("*.whl")):
        return
    WHEELS.mkdir(parents=True, exist_ok=True)
    print(f"[dev] building {COMPILED} {pin} once into {WHEELS} (takes minutes)", flush=True)
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-cache-dir", "-w", str(WHEELS), f"{COMPILED}=={pin}"],
        check=True,
        cwd=ROOT,
        env={**PORTABLE_BUILD, **os.environ},
    )


def _pinned(package: str) -> str:
    """The exact version pyproject.toml pins for ``package`` (one source of truth)."""
    import tomllib  # here, so Python < 3.11 still reaches the version message

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    for requirement in (r for group in extras.values() for r in group):
        match = re.fullmatch(rf"{re.escape(package)}(\[[^]]*\])?==(\S+)", requirement)
        if match:
            return match.group(2)
    raise SystemExit(f"pyproject.toml must pin {package} with '=='")


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in {"demo", "test"}:
        print(USAGE, file=sys.stderr)
        return 2
    command, rest = argv[0], argv[1:]
    # One environment serves both commands: the test extras are a superset of the demo's.
    ensure_environment("test")
    if command == "demo":
        return subprocess.call([str(PYTHON), "-m", "orchestra", "demo", *rest], cwd=ROOT)
    ensure_test_servers()
    environment = dict(os.environ)
    phoenix = ensure_phoenix()
    if phoenix is not None:
        environment[PHOENIX_VARIABLE] = str(phoenix)
    return subprocess.call([str(PYTHON), "-m", "pytest", *rest], cwd=ROOT, env=environment)


def ensure_phoenix() -> Path | None:
    """Install :data:`PHOENIX` into ``.venv/phoenix`` unless that very pin is there; its
    ``phoenix`` binary. None, installing nothing, when ``ORCHESTRA_NO_PHOENIX=1`` or the user
    named a binary in ``ORCHESTRA_PHOENIX``, and when the install fails (said, with how to skip
    it: the tracing test then says what is missing; the other tests run). A pin bump installs
    over the working environment (pip replaces the old version only once it has the new one,
    so an install that fails offline leaves the old one working) and is stamped only when pip
    succeeded."""
    if os.environ.get(NO_PHOENIX_VARIABLE) == "1" or os.environ.get(PHOENIX_VARIABLE):
        return None
    stamp = f"{PHOENIX} {sys.version}"
    stamp_file = PHOENIX_VENV / ".orchestra-install"
    if not (stamp_file.exists() and stamp_file.read_text() == stamp):
        print(
            f"[dev] installing {PHOENIX} into {PHOENIX_VENV} (the tracing test's receiver)",
            flush=True,
        )
        python = _program(PHOENIX_VENV, "python")
        if not python.exists():
            venv.EnvBuilder(with_pip=True, clear=True).create(PHOENIX_VENV)
        pip = [str(python), "-m", "pip", "--disable-pip-version-check", "-q"]
        try:
            subprocess.run([*pip, "install", PHOENIX], check=True, cwd=ROOT)
        except subprocess.CalledProcessError as error:
            print(
                f"[dev] installing {PHOENIX} failed (pip exited {error.returncode}); the "
                f"tracing test will say so ({NO_PHOENIX_VARIABLE}=1 skips it on purpose)",
                file=sys.stderr,
                flush=True,
            )
            return None
        stamp_file.write_text(stamp)
    return _program(PHOENIX_VENV, "phoenix")


def _program(environment: Path, name: str) -> Path:
    """A virtual environment's program ``name`` (``Scripts\\name.exe`` on Windows)."""
    if os.name == "nt":
        return environment / "Scripts" / f"{name}.exe"
    return environment / "bin" / name


CHROMIUM = Path("/usr/bin/chromium")
"""The browser the browser tests drive through Playwright (Debian's package: no
``playwright install`` download); tests/test_ui_browser.py reads the same path."""


def ensure_test_servers() -> None:
    """The session tests run real Redis and PostgreSQL servers (started by the tests on
    loopback), the web inspector's tests a real Chromium; install the Debian packages when
    they are missing."""
    missing = []
    if shutil.which("redis-server") is None:
        missing.append("redis-server")
    if not (glob.glob("/usr/lib/postgresql/*/bin/initdb") or shutil.which("initdb")):
        missing.append("postgresql")
    if not CHROMIUM.exists():
        missing.append("chromium")
    if not missing:
        return
    if os.name != "posix" or os.geteuid() != 0 or shutil.which("apt-get") is None:
        sys.exit(
            "[dev] the tests need redis-server, PostgreSQL and Chromium; install them (Debian: "
            f"apt-get install {' '.join(missing)}) or run as root to let dev.py do it"
        )
    print(f"[dev] installing {', '.join(missing)} (Debian packages)", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
        check=True,
        env=env,
    )


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
