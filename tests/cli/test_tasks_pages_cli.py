"""`tasks ls` a page at a time: `--after`/`--before` a task id, `--page --json` with the ids
that read the next and previous pages, a note on stderr when more follow."""

from __future__ import annotations

import json

from tests.cli.conftest import Cli


def test_ls_pages_with_after_and_before(cli: Cli) -> None:
    ids = [int(cli.ok("tasks", "submit", "echo", "--label", "gpu=none").stdout) for _ in range(7)]
    newest = ids[::-1]
    first = cli.ok("tasks", "ls", "--limit", "3", "--json", "--page")
    shown = json.loads(first.stdout)
    assert [t["id"] for t in shown["tasks"]] == newest[:3]
    assert (shown["next"], shown["prev"]) == (newest[2], None)
    second = json.loads(
        cli.ok(
            "tasks", "ls", "--limit", "3", "--after", str(shown["next"]), "--json", "--page"
        ).stdout
    )
    assert [t["id"] for t in second["tasks"]] == newest[3:6]
    assert second["prev"] == newest[3]
    back = cli.json("tasks", "ls", "--limit", "3", "--before", str(second["prev"]))
    assert [t["id"] for t in back] == newest[:3]
    last = cli.ok("tasks", "ls", "--limit", "3", "--after", str(newest[5]))
    assert last.stdout.splitlines()[1].split()[0] == str(newest[6])
    assert "more" not in last.stderr
    listed = cli.ok("tasks", "ls", "--limit", "3")
    assert f"tasks ls --after {newest[2]}" in listed.stderr
    assert cli("tasks", "ls", "--after", "1", "--before", "2").exit_code == 2
