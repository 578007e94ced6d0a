"""The README's two commands: `.ci/run` runs exactly the second, and the install step it needs
is part of that command (a fresh machine passes it as written)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]


def _readme_commands() -> list[str]:
    block = re.search(
        r"## Two commands.*?```bash\n(.*?)```", (PROJECT / "README.md").read_text(), re.S
    )
    assert block, "README has no '## Two commands' bash block"
    return [line for line in block.group(1).splitlines() if line and not line.startswith("#")]


def test_ci_runs_exactly_the_readmes_second_command():
    commands = _readme_commands()
    assert len(commands) == 2, commands
    ci = [
        line
        for line in (PROJECT / ".ci" / "run").read_text().splitlines()
        if line and not line.startswith(("#", "set ", "cd "))
    ]
    assert ci == [commands[1]]


def test_second_command_installs_the_system_packages_the_tests_need():
    second = _readme_commands()[1]
    assert second.startswith("bash scripts/test-packages.sh && ")
    script = (PROJECT / "scripts" / "test-packages.sh").read_text()
    # the packages tests/test_cluster.py needs
    assert "docker-compose" in script and "postgresql" in script
    # a no-op where both are present (this machine after the first run): exits 0 at once
    done = subprocess.run(["bash", str(PROJECT / "scripts" / "test-packages.sh")], timeout=600)
    assert done.returncode == 0


def test_first_command_runs_the_smoke_study():
    first = _readme_commands()[0]
    assert first.endswith(".venv/bin/python -m study run search_spaces/smoke.yaml")
    assert (PROJECT / "search_spaces" / "smoke.yaml").is_file()
