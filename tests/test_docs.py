"""Every code block in the docs and the README comes from a file that CI runs or
type-checks, so what users copy works.

The rule: Python and configuration blocks (yaml, ini, toml, systemd) are included from
files with ``--8<-- "path"``; shell, console, text, JSON and query blocks may be inline.
The README, which GitHub renders without includes, shows Python files verbatim instead.
"""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = sorted((ROOT / "docs").rglob("*.md"))
README = ROOT / "README.md"
FROM_FILES = {"python", "py", "yaml", "yml", "ini", "toml", "systemd", "dockerfile"}
FENCE = re.compile(
    r"^(?P<indent>[ \t]*)(?P<fence>```+|~~~+)[ \t]*(?P<lang>[\w+-]*)[^\n]*\n"
    r"(?P<body>.*?)^(?P=indent)(?P=fence)[ \t]*$",
    flags=re.M | re.S,
)
INCLUDE = re.compile(r'^--8<--\s+"(?P<path>[^":]+)(?::[\w-]+)?"$')
# Included Python files that the examples test below does not run, and the test that does.
RUN_ELSEWHERE = {
    "examples/quickstart.py": "tests/test_examples.py",  # needs Redis and a worker
    "examples/event_stream.py": "tests/test_docs.py",  # imported below; needs Redis to run
    "examples/telemetry/app.py": "tests/test_telemetry.py",  # serves /metrics on a port
    "tests/fixtures/seed_snippets.py": "tests/test_seed_compat.py",  # untyped, as the seed
    "examples/apscheduler/before.py": "tests/test_migrate_convert.py",  # APScheduler's app
    "examples/apscheduler/after.py": "tests/test_migrate_convert.py",  # beside before.py
    "examples/postgres_orders.py": "tests/test_postgres_scheduling.py",  # needs PostgreSQL
}
# Guides that must show code (every page under guides/, and these).
GUIDES = ["observability.md", "security.md", "reliability.md", "deployment.md", "index.md"]


@dataclass(frozen=True)
class Block:
    """One fenced code block: where it is, its language, and what it holds."""

    doc: Path
    line: int
    lang: str
    body: str

    def __str__(self) -> str:
        return f"{self.doc.relative_to(ROOT)}:{self.line} ({self.lang or 'no language'})"

    def includes(self) -> list[str] | None:
        """The files the block includes, or None when it holds anything else."""
        lines = [line.strip() for line in self.body.splitlines() if line.strip()]
        matches = [INCLUDE.match(line) for line in lines]
        if not lines or not all(matches):
            return None
        return [match["path"] for match in matches if match]


def blocks_of(doc: Path, text: str | None = None) -> list[Block]:
    """Every fenced code block in ``doc`` (or in ``text``, read as if it were ``doc``)."""
    text = doc.read_text() if text is None else text
    return [
        Block(doc, text.count("\n", 0, m.start()) + 1, m["lang"].lower(), m["body"])
        for m in FENCE.finditer(text)
    ]


def problems_of(blocks: list[Block]) -> list[str]:
    """The blocks that must come from files and do not, each with its place."""
    return [
        f"{block}: an inline block; put the code in a file under examples/ and include it "
        f'with --8<-- "examples/<file>"'
        for block in blocks
        if block.lang in FROM_FILES and block.includes() is None
    ]


def included_files() -> set[str]:
    """Every file a docs page includes."""
    return {path for doc in DOCS for block in blocks_of(doc) for path in block.includes() or []}


def test_python_and_config_blocks_in_the_docs_come_from_files() -> None:
    """No docs page holds Python or configuration inline: each such block is an include."""
    blocks = [block for doc in DOCS for block in blocks_of(doc)]
    assert len(blocks) > 30
    assert problems_of(blocks) == []


def test_an_inline_python_block_is_refused_naming_its_place() -> None:
    """The check itself: a page with an inline Python block fails, saying where it is."""
    page = "# Guide\n\nText.\n\n```python\nprint('hello')\n```\n\n```bash\nmake demo\n```\n"
    problems = problems_of(blocks_of(ROOT / "docs" / "planted.md", page))
    assert problems == [
        "docs/planted.md:5 (python): an inline block; put the code in a file under examples/ "
        'and include it with --8<-- "examples/<file>"'
    ]


def test_the_readmes_python_blocks_are_example_files_verbatim() -> None:
    """GitHub shows no includes, so each Python block of the README is an example file."""
    examples = {path.read_text() for path in (ROOT / "examples").rglob("*.py")}
    python = [block for block in blocks_of(README) if block.lang in FROM_FILES]
    assert python
    for block in python:
        assert block.body in examples, f"{block} is not the text of a file under examples/"


@pytest.mark.parametrize("guide", [*sorted(p.name for p in (ROOT / "docs/guides").glob("*.md"))])
def test_every_guide_shows_code_from_a_file(guide: str) -> None:
    """Each guide includes at least one file of code."""
    assert any(block.includes() for block in blocks_of(ROOT / "docs" / "guides" / guide))


@pytest.mark.parametrize("page", GUIDES)
def test_every_topic_page_shows_code_from_a_file(page: str) -> None:
    """Observability, security, reliability, deployment and the overview include code."""
    assert any(block.includes() for block in blocks_of(ROOT / "docs" / page))


def test_every_included_file_exists_and_python_ones_are_checked() -> None:
    """An included Python file lies under examples/ (type-checked and run below) or is run
    by the test named in RUN_ELSEWHERE."""
    for path in included_files():
        assert (ROOT / path).is_file(), path
        if path.endswith(".py") and not path.startswith("examples/"):
            assert path in RUN_ELSEWHERE, f"{path}: no test runs or type-checks it"
    for path, test in RUN_ELSEWHERE.items():  # the test names the file, or its folder
        text = (ROOT / test).read_text()
        assert path in text or f"{Path(path).parent}/" in text, f"{test} does not run {path}"


def test_the_examples_pass_mypy_strict_without_a_plugin(tmp_path: Path) -> None:
    """`mypy --strict examples/` as a user runs it: no pydantic plugin, no config."""
    config = tmp_path / "mypy.ini"
    config.write_text("[mypy]\n")
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--config-file", str(config), "examples"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]


def runnable() -> list[str]:
    """The included example files that run on their own, without a server."""
    return sorted(
        path
        for path in included_files()
        if path.startswith("examples/") and path.endswith(".py") and path not in RUN_ELSEWHERE
    )


@pytest.mark.parametrize("path", runnable())
def test_each_included_example_runs(path: str) -> None:
    """Each example a page includes runs to completion (test files run under pytest)."""
    file = ROOT / path
    command = [sys.executable, file.name]
    if file.name.startswith("test_"):
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", file.name]
    result = subprocess.run(command, capture_output=True, text=True, cwd=file.parent, timeout=120)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]


def test_the_event_stream_example_imports() -> None:
    """examples/event_stream.py needs Redis to follow anything; it imports and builds."""
    sys.path.insert(0, str(ROOT / "examples"))
    try:
        import event_stream

        assert callable(event_stream.follow)
    finally:
        sys.path.remove(str(ROOT / "examples"))
