"""Usage errors of sub-commands are one line too, with the command and where to get help."""

from __future__ import annotations

import pytest

from tests.cli.conftest import Cli, stderr_lines


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["tasks", "submit", "echo", "--max-attempts", "0"], "--max-attempts"),
        (["tasks", "ls", "--state", "bogus"], "--state"),
        (["tasks", "show", "not-a-number"], "task_id"),
        (["jobs", "export"], "job_id"),
        (["tasks", "submit", "echo", "--no-such-option"], "--no-such-option"),
    ],
)
def test_usage_errors_are_one_line_with_exit_2(cli: Cli, argv: list[str], says: str) -> None:
    result = cli(*argv)
    assert result.exit_code == 2
    lines = stderr_lines(result.stderr)
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("bitinglip: bitinglip ") and says in lines[0]
    assert "--help" in lines[0]
