"""`bitinglip db prune` and `db stats`: through CliRunner, and `db prune` once as a process."""

from __future__ import annotations

import json
import time
from pathlib import Path

from bitinglip.control.store.db import open_store
from tests.cli.conftest import Cli, Proc, stderr_lines
from tests.control.aged_tasks import add_finished, add_job

DAY = 86400.0


def aged(data_dir: Path) -> dict[str, list[int]]:
    """Tasks past the default retention (rows: 30d, outputs: 7d), and recent ones."""
    store = open_store(data_dir / "state.db")
    try:
        now = time.time()
        job = add_job(store, 600)
        return {
            "rows": add_finished(store, 600, now - 31 * DAY, job_id=job),
            "outputs": add_finished(store, 700, now - 8 * DAY),
            "recent": add_finished(store, 9, now - DAY),
        }
    finally:
        store.close()


def test_prune_dry_run_then_prune_with_the_profiles_retention(cli: Cli) -> None:
    made = aged(cli.data_dir)
    dry = cli.json("db", "prune", "--dry-run")
    assert (dry["dry_run"], dry["tasks_deleted"], dry["outputs_pruned"]) == (True, 600, 700)
    assert (dry["outputs_kept"], dry["tasks_kept"], dry["jobs"]) == ("7d", "30d", 1)
    assert dry["events"] == 1300 * 3 and dry["output_chunks"] == 1300 * 2
    assert cli.counts()["succeeded"] == 1309  # nothing changed
    done = cli.json("db", "prune")
    assert {k: done[k] for k in ("tasks_deleted", "outputs_pruned", "events", "bytes")} == {
        k: dry[k] for k in ("tasks_deleted", "outputs_pruned", "events", "bytes")
    }
    assert done["bytes_given_back"] > 0 and done["file_bytes_after"] < done["file_bytes_before"]
    assert cli.counts()["succeeded"] == 709
    shown = cli.json("tasks", "show", str(made["outputs"][0]))
    assert shown["result"] is None and shown["pruned_at"] is not None
    said = cli.ok("tasks", "show", str(made["outputs"][0])).stdout
    assert "retention removed its payload, result, events and output" in said
    text = cli.ok("db", "prune")
    assert text.stdout.startswith("prune the outputs of 0 tasks and delete 0 tasks")
    assert "gave back" in text.stdout


def test_older_than_overrides_both_cut_offs(cli: Cli) -> None:
    aged(cli.data_dir)
    done = cli.json("db", "prune", "--older-than", "2d", "--outputs-only")
    assert (done["tasks_deleted"], done["outputs_pruned"], done["tasks_kept"]) == (
        0,
        1300,
        "forever",
    )
    done = cli.json("db", "prune", "--older-than", "12h")
    assert (done["tasks_deleted"], done["outputs_pruned"]) == (1309, 0)
    assert sum(cli.counts().values()) == 0


def test_a_bad_older_than_is_one_line_and_exit_2(cli: Cli) -> None:
    for bad in ("soon", "-1d", "forever"):
        result = cli("db", "prune", "--older-than", bad)
        assert result.exit_code == 2, result.stdout
        (line,) = stderr_lines(result.stderr)
        assert line.startswith("bitinglip: db prune: --older-than") and "7d" in line


def test_stats_lists_rows_and_bytes_per_table(cli: Cli) -> None:
    aged(cli.data_dir)
    found = cli.json("db", "stats")
    tables = {t["name"]: t for t in found["tables"]}
    assert tables["tasks"]["rows"] == 1309 and tables["task_events"]["rows"] == 1309 * 3
    assert tables["task_output"]["rows"] == 1309 * 2 and tables["tasks_finished"]["kind"] == "index"
    assert found["auto_vacuum"] == "incremental" and found["source"] == "dbstat"
    assert found["file_bytes"] + found["wal_bytes"] > sum(t["bytes"] for t in found["tables"]) / 2
    assert found["page_count"] * found["page_size"] >= sum(t["bytes"] for t in found["tables"])
    text = cli.ok("db", "stats").stdout
    assert "auto_vacuum  incremental" in text and "task_output" in text


def test_every_db_command_has_help(cli: Cli) -> None:
    for command in ("backup", "prune", "stats"):
        result = cli.ok("db", command, "--help")
        assert "Usage:" in result.stdout
    assert "--dry-run" in cli.ok("db", "prune", "--help").stdout


def test_export_of_a_job_whose_rows_are_gone_is_one_line(cli: Cli) -> None:
    aged(cli.data_dir)
    cli.ok("db", "prune")
    result = cli("jobs", "export", "1")
    assert result.exit_code == 1 and result.stdout == ""
    (line,) = stderr_lines(result.stderr)
    assert "job 1: all 600 of its tasks were deleted by retention" in line


def test_db_prune_as_a_process(proc: Proc) -> None:
    aged(proc.data_dir)
    done = proc.json("db", "prune", "--older-than", "1d")
    assert done["tasks_deleted"] == 1309 and done["hint"] is None
    text = proc.ok("db", "prune", "--dry-run")
    assert text.stdout.startswith("would prune the outputs of 0 tasks")
    stats = json.loads(proc.ok("db", "stats", "--json").stdout)
    assert {t["name"]: t["rows"] for t in stats["tables"]}["tasks"] == 0
