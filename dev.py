"""The project's two entry points: ``python3 dev.py demo`` and ``python3 dev.py test``.

Standard library only, so it works on a fresh clone with nothing but Python 3.11+.
Each command makes sure ``.venv`` exists and holds the project (editable) with the
extras that command needs; the install is redone only when ``pyproject.toml`` changes,
so repeated runs start in well under a second.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PYTHON = BIN / ("python.exe" if os.name == "nt" else "python")

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
    pip = [str(PYTHON), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True, cwd=ROOT)
    subprocess.run([*pip, "-e", target], check=True, cwd=ROOT)
    stamp_file.write_text(stamp)


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in {"demo", "test"}:
        print(USAGE, file=sys.stderr)
        return 2
    command, rest = argv[0], argv[1:]
    # One environment serves both commands: the test extras are a superset of the demo's.
    ensure_environment("test")
    if command == "demo":
        return subprocess.call([str(PYTHON), "-m", "orchestra", "demo", *rest], cwd=ROOT)
    return subprocess.call([str(PYTHON), "-m", "pytest", *rest], cwd=ROOT)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
