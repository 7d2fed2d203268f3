"""What pip users get: a wheel with its licence and type marker, one version written once,
the classifiers and extras they look for, and a command whose help reads as plain text."""

from __future__ import annotations

import email
import subprocess
import sys
import zipfile
from email.message import Message
from pathlib import Path

import pytest

import cml_jobs

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    """The wheel pip builds from this checkout."""
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (built,) = out.glob("cml_jobs-*.whl")
    return zipfile.ZipFile(built)


def metadata(wheel: zipfile.ZipFile) -> Message:
    """The wheel's METADATA."""
    (name,) = [n for n in wheel.namelist() if n.endswith(".dist-info/METADATA")]
    return email.message_from_bytes(wheel.read(name))


def test_the_wheel_holds_the_licence_and_the_type_marker(wheel: zipfile.ZipFile) -> None:
    """LICENSE (MIT, the cml-jobs developers) and py.typed ship in the wheel."""
    names = wheel.namelist()
    assert "cml_jobs/py.typed" in names
    (licence,) = [n for n in names if n.endswith("dist-info/licenses/LICENSE")]
    text = wheel.read(licence).decode()
    assert text.startswith("MIT License") and "The cml-jobs developers" in text


def test_the_version_is_written_once(wheel: zipfile.ZipFile) -> None:
    """The wheel's version is cml_jobs.__version__, and pyproject.toml holds no other."""
    assert metadata(wheel)["Version"] == cml_jobs.__version__
    assert "\nversion =" not in (ROOT / "pyproject.toml").read_text()


def test_the_classifiers_and_licence_say_what_users_look_for(wheel: zipfile.ZipFile) -> None:
    """Python 3.10-3.13, beta, asyncio, any OS; the licence as an SPDX expression."""
    meta = metadata(wheel)
    classifiers = set(meta.get_all("Classifier") or [])
    for version in ("3.10", "3.11", "3.12", "3.13"):
        assert f"Programming Language :: Python :: {version}" in classifiers
    assert {
        "Development Status :: 4 - Beta",
        "Framework :: AsyncIO",
        "Operating System :: OS Independent",
        "Typing :: Typed",
    } <= classifiers
    assert meta["License-Expression"] == "MIT"
    assert not [c for c in classifiers if c.startswith("License ::")]  # PyPI refuses both


def test_the_redis_and_embedded_extras_exist(wheel: zipfile.ZipFile) -> None:
    """`pip install "cml-jobs[redis]"` and `[embedded]` install without a warning."""
    extras = set(metadata(wheel).get_all("Provides-Extra") or [])
    assert {"redis", "embedded", "aws", "otel", "prometheus"} <= extras


def test_the_command_shows_its_version_and_help_as_plain_text() -> None:
    """`cml-jobs --version` prints the version; `--help` holds no reStructuredText."""
    command = [sys.executable, "-m", "cml_jobs"]
    version = subprocess.run([*command, "--version"], capture_output=True, text=True, timeout=60)
    assert version.stdout.strip() == f"cml-jobs {cml_jobs.__version__}"
    usage = subprocess.run([*command, "--help"], capture_output=True, text=True, timeout=60)
    assert usage.returncode == 0
    assert "cml-jobs: typed background jobs" in usage.stdout
    assert "``" not in usage.stdout and "`" not in usage.stdout
