"""What a test does when the machine lacks something it needs (a server, a tool, a
browser): under ``CI=true`` it fails, since .ci/run provides everything the suite needs;
on a developer's machine it is skipped, with what to install."""

from __future__ import annotations

import os
from typing import NoReturn

import pytest

__all__ = ["unavailable"]


def unavailable(message: str) -> NoReturn:
    """Fail under ``CI=true`` (.ci/run should have provided it), else skip."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{message} (CI=true: .ci/run should have provided it)", pytrace=False)
    pytest.skip(message)
