"""The README stays true: its runnable examples run, its commands are the ones CI runs."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

README = (Path(__file__).parent.parent / "README.md").read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", README, flags=re.DOTALL)
RUNNABLE = [
    block for block in BLOCKS if "asyncio.run(main())" in block and "FakeModelsLab" in block
]


@pytest.mark.parametrize("code", RUNNABLE)
def test_runnable_examples_run(code: str, tmp_path: Path) -> None:
    """Each self-contained example runs to the end against the fake and prints its results."""
    script = tmp_path / "example.py"
    script.write_text(code)
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, check=False
    )
    assert 0 == done.returncode, done.stderr
    assert "sku-" in done.stdout


def test_there_is_a_runnable_example() -> None:
    """At least the batch example runs as written."""
    assert RUNNABLE


def test_the_top_of_the_readme_has_exactly_the_two_commands() -> None:
    """One command installs and runs the demo, one installs and runs the tests."""
    commands = [line for line in README.splitlines() if line.startswith("python -m venv")]
    assert 2 == len(commands)
    assert commands[0].endswith("modelslab-async demo")
    assert commands[1].endswith("pytest")
