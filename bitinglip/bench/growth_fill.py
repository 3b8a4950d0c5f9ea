"""Finished tasks for `bench growth`, written straight into a state database in seconds.

A million generations cannot be run on a benchmark machine, so their rows are written as the
queue would have left them: state `succeeded`, a prompt in the payload, a result with text and
usage, output chunks and the events of their moves. The sizes are those of a 256-token
completion (a prompt of ~300 bytes, ~1 KB of text in the result and again in the streamed
output, three events). The counters' triggers run as for any insert.
"""

from __future__ import annotations

from pathlib import Path

from bitinglip.control.store.db import open_store

PROMPT_BYTES = 300
TEXT_BYTES = 1_000
CHUNKS = 4
BATCH = 50_000
COUNT = "WITH RECURSIVE c(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM c WHERE i < :rows - 1)"


def finished_generations(db: Path, n: int, finished_at: float) -> None:
    """Append `n` succeeded generate tasks that finished at `finished_at`, with their output
    chunks and events, in batches of BATCH rows per transaction."""
    store = open_store(db)
    conn = store.conn
    try:
        for start in range(0, n, BATCH):
            rows = min(BATCH, n - start)
            with store.write():
                first = int(
                    conn.execute("SELECT coalesce(max(id), 0) + 1 FROM tasks").fetchone()[0]
                )
                args = {"rows": rows, "first": first, "at": finished_at, "chunks": CHUNKS}
                args |= {"prompt": PROMPT_BYTES, "text": TEXT_BYTES, "chunk": TEXT_BYTES // CHUNKS}
                conn.execute(
                    f"{COUNT} INSERT INTO tasks (id, kind, state, priority, payload, model,"
                    " attempt, max_attempts, run_after, lease_token, ran_on, result, created_at,"
                    " started_at, finished_at) SELECT :first + i, 'generate', 'succeeded', 0,"
                    " json_object('prompt', printf('%d %.*c', i, :prompt, 'p'), 'max_tokens',"
                    " 256), 'gemma-3-270m', 1, 3, :at - 9, 1, 'local', json_object('text',"
                    " printf('%.*c', :text, 't'), 'finish_reason', 'length', 'usage',"
                    " json_object('prompt_tokens', 75, 'completion_tokens', 256)), :at - 10,"
                    " :at - 9, :at FROM c",
                    args,
                )
                conn.execute(
                    f"{COUNT.replace(':rows', ':outputs')} INSERT INTO task_output (task_id, seq,"
                    " data) SELECT :first + i / :chunks, i % :chunks + 1,"
                    " printf('%.*c', :chunk, 'o') FROM c",
                    args | {"outputs": rows * CHUNKS},
                )
                conn.execute(
                    "INSERT INTO task_events (task_id, at, from_state, to_state, attempt, detail)"
                    " SELECT id, created_at, NULL, 'queued', 1, 'submitted' FROM tasks"
                    " WHERE id >= ? UNION ALL SELECT id, started_at, 'queued', 'running', 1,"
                    " 'claimed by bench' FROM tasks WHERE id >= ? UNION ALL SELECT id,"
                    " finished_at, 'running', 'succeeded', 1, NULL FROM tasks WHERE id >= ?",
                    (first, first, first),
                )
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        store.close()
