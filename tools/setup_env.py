#!/usr/bin/env python3
"""Make ``.venv`` in this checkout and install everything segbook needs into it.

The README's two commands start with ``python3 tools/setup_env.py``. Why a
virtual environment always: Debian, Ubuntu and Homebrew's Python refuse
``pip install`` into the system interpreter (PEP 668, "externally-managed-
environment"), and a project folder's own ``.venv`` works the same on every
Linux and Mac. Why this script rather than ``python3 -m venv``: on Debian and
Ubuntu ``venv`` cannot install pip until ``python3-venv`` is installed
(ensurepip is split off); then the environment is made without pip and pip is
bootstrapped from its wheel on PyPI (a wheel is a zip that Python can run).

A second run is quick: the requirements are installed again only when
``requirements.txt`` or ``pyproject.toml`` changed (a hash is kept in
``.venv/segbook-requirements.sha256``). Standard library only.

The install itself goes through uv (installed from PyPI into the environment
first), which fetches and unpacks torch's wheels in parallel; if uv is
unavailable or fails, pip does it, more slowly.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
import urllib.request
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
STAMP = VENV / "segbook-requirements.sha256"
PIP_JSON = "https://pypi.org/pypi/pip/json"
MIN_PYTHON = (3, 11)  # pyproject.toml's requires-python


def venv_python(env_dir: Path = VENV) -> Path:
    return env_dir / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def requirements_hash(root: Path = ROOT) -> str:
    digest = hashlib.sha256()
    for name in ("requirements.txt", "pyproject.toml"):
        digest.update((root / name).read_bytes())
    return digest.hexdigest()


def has_ensurepip() -> bool:
    try:
        import ensurepip  # noqa: F401  # Debian ships it in python3-venv, apart from the stdlib
    except ImportError:
        return False
    return True


def _bootstrap_pip(python: Path) -> None:
    """Install pip into a pip-less environment from pip's own wheel on PyPI."""
    with urllib.request.urlopen(PIP_JSON, timeout=60) as answer:
        release = json.load(answer)
    wheel = next(f for f in release["urls"] if f["filename"].endswith(".whl"))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / wheel["filename"]
        urllib.request.urlretrieve(wheel["url"], path)
        if hashlib.sha256(path.read_bytes()).hexdigest() != wheel["digests"]["sha256"]:
            raise SystemExit(f"setup_env: the pip wheel from PyPI failed its checksum ({wheel['url']}); run again.")
        subprocess.run([str(python), f"{path}/pip", "install", "--quiet", str(path)], check=True)


def make_venv() -> Path:
    python = venv_python()
    if python.exists():
        return python
    print(f"setup_env: making {VENV.name}/ with {sys.executable} ({sys.version.split()[0]})", flush=True)
    if has_ensurepip():
        venv.EnvBuilder(with_pip=True).create(VENV)
    else:
        print("setup_env: this Python has no ensurepip (Debian/Ubuntu without python3-venv); "
              "bootstrapping pip from PyPI", flush=True)
        venv.EnvBuilder(with_pip=False).create(VENV)
        _bootstrap_pip(python)
    return python


# pip's settings that uv spells differently; uv reads neither pip.conf nor PIP_* variables.
_PIP_TO_UV = {"index-url": "--index-url", "extra-index-url": "--extra-index-url",
              "find-links": "--find-links", "constraint": "--constraint"}
_SCOPES = (":env:", "install", "global")  # pip's precedence: variables, [install], [global]


def parse_pip_config(listed: str) -> dict[str, str]:
    """Each setting's effective value in ``pip config list``'s output, the strongest scope's."""
    found: dict[str, dict[str, str]] = {}
    for line in listed.splitlines():  # e.g. global.find-links='/opt/wheels' or :env:.index-url='...'
        scoped, _, value = line.partition("=")
        scope, _, key = scoped.rpartition(".")
        found.setdefault(key, {})[scope] = value.strip().strip("'\"")
    return {key: next(by[s] for s in _SCOPES if s in by) for key, by in found.items()
            if any(s in by for s in _SCOPES)}


def pip_settings(python: Path) -> dict[str, str]:
    """pip's effective settings (from pip.conf files and PIP_* variables)."""
    listed = subprocess.run([str(python), "-m", "pip", "config", "list"], capture_output=True, text=True).stdout
    return parse_pip_config(listed)


def install_with_uv(python: Path) -> bool:
    """Install with uv (from PyPI, into the environment): torch's 5 GB of wheels in about 40 s, not 90.

    uv downloads, unpacks and byte-compiles in parallel and keeps a cache that
    makes the next environment a matter of seconds. It is told pip's own index
    settings, and pip's rule of taking the best version from any index. If uv
    cannot be installed or fails, the caller falls back to pip: False.
    """
    settings = pip_settings(python)
    if subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "uv"],
                      cwd=ROOT).returncode:
        return False
    uv = python.parent / ("uv.exe" if os.name == "nt" else "uv")
    command = [str(uv), "pip", "install", "--quiet", "--python", str(python), "--compile-bytecode",
               "--index-strategy", "unsafe-best-match", "-r", str(ROOT / "requirements.txt")]
    for key, flag in _PIP_TO_UV.items():
        for value in settings.get(key, "").split():
            command += [flag, value]
    env = dict(os.environ)
    if settings.get("cert") and "SSL_CERT_FILE" not in env:
        env["SSL_CERT_FILE"] = settings["cert"]
    if subprocess.run(command, cwd=ROOT, env=env).returncode:
        print("setup_env: uv could not install the requirements; installing them with pip instead", flush=True)
        return False
    return True


def install_with_pip(python: Path) -> None:
    # pip byte-compiles every file it installs on one core; compileall does it on all of them
    # (about 20 s less for torch's thousands of modules on two cores).
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                    "--no-compile", "-r", str(ROOT / "requirements.txt")], check=True, cwd=ROOT)
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                          check=True, capture_output=True, text=True).stdout.strip()
    # Some packages ship files that are not meant to compile (templates, Python 2 examples): quiet, and no check.
    subprocess.run([str(python), "-m", "compileall", "-q", "-q", "-j", "0", site], stdout=subprocess.DEVNULL)


def main() -> int:
    if sys.version_info < MIN_PYTHON:
        raise SystemExit(f"setup_env: segbook needs Python {'.'.join(map(str, MIN_PYTHON))} or newer; "
                         f"this is {sys.version.split()[0]}. Run it with a newer python3.")
    python = make_venv()
    wanted = requirements_hash()
    if STAMP.is_file() and STAMP.read_text().strip() == wanted:
        print(f"setup_env: {VENV.name}/ is up to date", flush=True)
        return 0
    print(f"setup_env: installing requirements.txt into {VENV.name}/ "
          "(torch is large: a minute or more the first time)", flush=True)
    if not install_with_uv(python):
        install_with_pip(python)
    STAMP.write_text(wanted + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
