"""The numbered schema migrations of the state database, oldest first.

Append, never edit: a database records which of these it has applied (and `user_version` holds
their count), so a released migration is history.
"""

from __future__ import annotations

INITIAL = (
    """CREATE TABLE jobs (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL,
        source TEXT,
        format TEXT NOT NULL CHECK (format IN ('bitinglip', 'openai')),
        total INTEGER NOT NULL,
        created_at REAL NOT NULL
    )""",
    """CREATE TABLE tasks (
        id INTEGER PRIMARY KEY,
        kind TEXT NOT NULL,
        state TEXT NOT NULL,
        priority INTEGER NOT NULL DEFAULT 0,
        payload TEXT NOT NULL,
        model TEXT,
        host TEXT,
        labels TEXT,
        idempotency_key TEXT,
        job_id INTEGER REFERENCES jobs(id),
        line_no INTEGER,
        custom_id TEXT,
        attempt INTEGER NOT NULL DEFAULT 1,
        max_attempts INTEGER NOT NULL,
        retry_on_error INTEGER NOT NULL DEFAULT 0,
        run_after REAL NOT NULL,
        lease_owner TEXT,
        lease_token INTEGER NOT NULL DEFAULT 0,
        lease_expires_at REAL,
        ran_on TEXT,
        cancel_requested INTEGER NOT NULL DEFAULT 0,
        result TEXT,
        error TEXT,
        error_kind TEXT,
        created_at REAL NOT NULL,
        started_at REAL,
        finished_at REAL
    )""",
    "CREATE INDEX tasks_ready ON tasks (priority DESC, id) WHERE state = 'queued'",
    "CREATE INDEX tasks_running ON tasks (lease_expires_at) WHERE state = 'running'",
    "CREATE UNIQUE INDEX tasks_idempotency ON tasks (idempotency_key)"
    " WHERE idempotency_key IS NOT NULL",
    "CREATE INDEX tasks_job ON tasks (job_id, line_no) WHERE job_id IS NOT NULL",
    """CREATE TABLE task_events (
        id INTEGER PRIMARY KEY,
        task_id INTEGER NOT NULL REFERENCES tasks(id),
        at REAL NOT NULL,
        from_state TEXT,
        to_state TEXT NOT NULL,
        attempt INTEGER NOT NULL,
        detail TEXT
    )""",
    "CREATE INDEX task_events_task ON task_events (task_id, id)",
    """CREATE TABLE task_output (
        task_id INTEGER NOT NULL REFERENCES tasks(id),
        seq INTEGER NOT NULL,
        data TEXT NOT NULL,
        PRIMARY KEY (task_id, seq)
    ) WITHOUT ROWID""",
    """CREATE TABLE controller (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        owner TEXT NOT NULL,
        pid INTEGER NOT NULL,
        hostname TEXT NOT NULL,
        started_at REAL NOT NULL,
        renewed_at REAL NOT NULL,
        expires_at REAL NOT NULL,
        doorbell TEXT
    )""",
)

# Hosts: one row each with its health signals (JSON) and last hello's facts (JSON); and the
# telemetry ring, bounded without DELETE: a sample at agent time `at` lands in slot
# int(at // interval) % capacity and replaces what was there. gpu = -1 is the host-level row
# (cpu/ram/disk/load columns), gpu >= 0 a GPU (util/mem/temp/power columns); unknown metrics are
# NULL. The key puts one host's rows of one second side by side: a second's write touches a page
# or two per host, not one per GPU (7x faster at 300 hosts x 8 GPUs); reading one GPU's history
# filters a host's range. host_telemetry_latest keeps each host's newest snapshot as sent.
HOSTS = (
    """CREATE TABLE hosts (
        name TEXT PRIMARY KEY,
        kind TEXT,
        address TEXT,
        healthy INTEGER NOT NULL DEFAULT 0,
        health TEXT NOT NULL DEFAULT '{}',
        facts TEXT,
        connected INTEGER NOT NULL DEFAULT 0,
        last_seen REAL,
        updated_at REAL NOT NULL
    )""",
    """CREATE TABLE host_telemetry (
        host TEXT NOT NULL,
        gpu INTEGER NOT NULL,
        slot INTEGER NOT NULL,
        at REAL NOT NULL,
        cpu_pct REAL,
        load1 REAL,
        ram_used_bytes INTEGER,
        ram_total_bytes INTEGER,
        disk_free_bytes INTEGER,
        disk_total_bytes INTEGER,
        util_pct REAL,
        mem_used_bytes INTEGER,
        mem_total_bytes INTEGER,
        temp_c REAL,
        power_w REAL,
        power_limit_w REAL,
        PRIMARY KEY (host, slot, gpu)
    ) WITHOUT ROWID""",
    """CREATE TABLE host_telemetry_latest (
        host TEXT PRIMARY KEY,
        at REAL NOT NULL,
        received_at REAL NOT NULL,
        snapshot TEXT NOT NULL
    )""",
)

# The model registry: one row per (repo, commit, file), never changed once written (a branch
# that moves on makes a new row), and one row per copy of a model on a host with its state.
# `"commit"` is quoted: COMMIT is an SQLite keyword. tasks.progress holds the latest progress
# (JSON) of a running task, e.g. a pull's bytes, total, rate and ETA.
MODELS = (
    """CREATE TABLE models (
        id INTEGER PRIMARY KEY,
        repo TEXT NOT NULL,
        "commit" TEXT NOT NULL,
        file TEXT NOT NULL,
        quant TEXT,
        size INTEGER NOT NULL,
        sha256 TEXT NOT NULL,
        created_at REAL NOT NULL,
        UNIQUE (repo, "commit", file)
    )""",
    """CREATE TABLE host_models (
        host TEXT NOT NULL,
        model_id INTEGER NOT NULL REFERENCES models(id),
        state TEXT NOT NULL CHECK (state IN ('pulling', 'ready', 'quarantined', 'failed')),
        path TEXT,
        bytes_done INTEGER NOT NULL DEFAULT 0,
        error TEXT,
        task_id INTEGER REFERENCES tasks(id),
        last_used_at REAL,
        loaded INTEGER NOT NULL DEFAULT 0,
        updated_at REAL NOT NULL,
        PRIMARY KEY (host, model_id)
    )""",
    "CREATE INDEX host_models_model ON host_models (model_id)",
    "ALTER TABLE tasks ADD COLUMN progress TEXT",
)

# Placement: why a queued model task is not running yet (`waiting: pulling to gpu2 (43%)`,
# `fits nowhere: ...`), written by the dispatcher's placement and cleared when claimed; and an
# index over the queued tasks that name a model, for placement's per-model demand (echo tasks,
# which name none, are not in it).
PLACEMENT = (
    "ALTER TABLE tasks ADD COLUMN wait_reason TEXT",
    "CREATE INDEX tasks_queued_model ON tasks (model, host, labels)"
    " WHERE state = 'queued' AND model IS NOT NULL",
)

# The memory facts of a registered model's GGUF header (JSON, `gguf_meta.header_facts`: tensor
# bytes by layer, layer and head counts, key/value lengths), so placement sizes a model whose
# copies are all on other hosts with its KV cache. Written once, when first read; NULL for rows
# registered before (and until a header is read).
MODEL_FACTS = ("ALTER TABLE models ADD COLUMN facts TEXT",)

# Depth: costs bounded by the work a query returns, not by how many tasks are queued or stored.
# - `tasks_ready` per kind: a claim reads each kind's queue head (`TaskQueue.claim`), so a deep
#   backlog of one kind is not walked by the claims of another, and `tasks_queued_model` per
#   model and kind, so a claim of some models does not walk the others; `tasks_due` finds the
#   next task waiting out a backoff; `tasks_state` lists by state, `tasks_finished` finds what
#   retention prunes and the tokens of a recent window, `tasks_pulls` lists the pulls.
# - Counters kept by triggers in the transaction of every insert, state change and delete of a
#   task, so the console, `status`, `/health` and `/metrics` never count rows: `task_counts` per
#   state, `job_counts` per job and state, `queue_totals` the prompt and completion tokens of every
#   task that ever succeeded (monotonic: pruning rows does not lower them), and `queued_groups`
#   the queued tasks that name a model per (model, kind, host, labels) with the newest id
#   (placement's demand; '' stands for no host or no labels, so the key has no NULLs).
# - `wait_reasons`: why a placement group waits, one row per group instead of one per task (a
#   reason changing no longer rewrites a million rows); `tasks.wait_reason` is no longer written.
_STATES = "('queued'), ('running'), ('succeeded'), ('failed'), ('canceled'), ('dead')"
_GROUP = "coalesce(NEW.host, ''), coalesce(NEW.labels, '')"
_OLD_GROUP = "model = OLD.model AND kind = OLD.kind AND host = coalesce(OLD.host, '')" + (
    " AND labels = coalesce(OLD.labels, '')"
)
DEPTH = (
    "DROP INDEX tasks_ready",
    "CREATE INDEX tasks_ready ON tasks (kind, priority DESC, id) WHERE state = 'queued'",
    "CREATE INDEX tasks_due ON tasks (kind, run_after) WHERE state = 'queued'",
    "DROP INDEX tasks_queued_model",
    "CREATE INDEX tasks_queued_model ON tasks (model, kind, priority DESC, id)"
    " WHERE state = 'queued' AND model IS NOT NULL",
    "CREATE INDEX tasks_state ON tasks (state, id)",
    "CREATE INDEX tasks_finished ON tasks (finished_at) WHERE finished_at IS NOT NULL",
    "CREATE INDEX tasks_pulls ON tasks (id) WHERE kind IN ('pull', 'remove')",
    "CREATE TABLE task_counts (state TEXT PRIMARY KEY, n INTEGER NOT NULL) WITHOUT ROWID",
    f"INSERT INTO task_counts (state, n) SELECT column1, 0 FROM (VALUES {_STATES})",
    "UPDATE task_counts SET n = (SELECT count(*) FROM tasks WHERE state = task_counts.state)",
    """CREATE TABLE job_counts (
        job_id INTEGER NOT NULL,
        state TEXT NOT NULL,
        n INTEGER NOT NULL,
        PRIMARY KEY (job_id, state)
    ) WITHOUT ROWID""",
    "INSERT INTO job_counts (job_id, state, n) SELECT job_id, state, count(*) FROM tasks"
    " WHERE job_id IS NOT NULL GROUP BY job_id, state",
    "CREATE TABLE queue_totals (name TEXT PRIMARY KEY, n INTEGER NOT NULL) WITHOUT ROWID",
    "INSERT INTO queue_totals (name, n) SELECT 'prompt_tokens',"
    " coalesce(sum(result->>'$.usage.prompt_tokens'), 0) FROM tasks WHERE state = 'succeeded'",
    "INSERT INTO queue_totals (name, n) SELECT 'completion_tokens',"
    " coalesce(sum(result->>'$.usage.completion_tokens'), 0) FROM tasks"
    " WHERE state = 'succeeded'",
    """CREATE TABLE queued_groups (
        model TEXT NOT NULL,
        kind TEXT NOT NULL,
        host TEXT NOT NULL,
        labels TEXT NOT NULL,
        n INTEGER NOT NULL,
        newest INTEGER NOT NULL,
        PRIMARY KEY (model, kind, host, labels)
    ) WITHOUT ROWID""",
    "INSERT INTO queued_groups (model, kind, host, labels, n, newest) SELECT model, kind,"
    " coalesce(host, ''), coalesce(labels, ''), count(*), max(id) FROM tasks"
    " WHERE state = 'queued' AND model IS NOT NULL GROUP BY 1, 2, 3, 4",
    """CREATE TABLE wait_reasons (
        model TEXT NOT NULL,
        host TEXT NOT NULL,
        labels TEXT NOT NULL,
        reason TEXT NOT NULL,
        PRIMARY KEY (model, host, labels)
    ) WITHOUT ROWID""",
    "UPDATE tasks SET wait_reason = NULL WHERE state = 'queued' AND wait_reason IS NOT NULL",
    """CREATE TRIGGER tasks_count_insert AFTER INSERT ON tasks BEGIN
        UPDATE task_counts SET n = n + 1 WHERE state = NEW.state;
    END""",
    """CREATE TRIGGER tasks_count_delete AFTER DELETE ON tasks BEGIN
        UPDATE task_counts SET n = n - 1 WHERE state = OLD.state;
    END""",
    """CREATE TRIGGER tasks_count_move AFTER UPDATE OF state ON tasks
    WHEN OLD.state IS NOT NEW.state BEGIN
        UPDATE task_counts SET n = n - 1 WHERE state = OLD.state;
        UPDATE task_counts SET n = n + 1 WHERE state = NEW.state;
    END""",
    """CREATE TRIGGER tasks_job_insert AFTER INSERT ON tasks WHEN NEW.job_id IS NOT NULL BEGIN
        INSERT INTO job_counts (job_id, state, n) VALUES (NEW.job_id, NEW.state, 1)
        ON CONFLICT (job_id, state) DO UPDATE SET n = n + 1;
    END""",
    """CREATE TRIGGER tasks_job_delete AFTER DELETE ON tasks WHEN OLD.job_id IS NOT NULL BEGIN
        UPDATE job_counts SET n = n - 1 WHERE job_id = OLD.job_id AND state = OLD.state;
    END""",
    """CREATE TRIGGER tasks_job_move AFTER UPDATE OF state ON tasks
    WHEN OLD.state IS NOT NEW.state AND NEW.job_id IS NOT NULL BEGIN
        UPDATE job_counts SET n = n - 1 WHERE job_id = OLD.job_id AND state = OLD.state;
        INSERT INTO job_counts (job_id, state, n) VALUES (NEW.job_id, NEW.state, 1)
        ON CONFLICT (job_id, state) DO UPDATE SET n = n + 1;
    END""",
    """CREATE TRIGGER tasks_tokens AFTER UPDATE OF state ON tasks
    WHEN NEW.state = 'succeeded' AND OLD.state IS NOT 'succeeded' AND NEW.result IS NOT NULL
    BEGIN
        UPDATE queue_totals SET n = n + coalesce(NEW.result->>'$.usage.prompt_tokens', 0)
        WHERE name = 'prompt_tokens';
        UPDATE queue_totals SET n = n + coalesce(NEW.result->>'$.usage.completion_tokens', 0)
        WHERE name = 'completion_tokens';
    END""",
    f"""CREATE TRIGGER tasks_group_insert AFTER INSERT ON tasks
    WHEN NEW.state = 'queued' AND NEW.model IS NOT NULL BEGIN
        INSERT INTO queued_groups (model, kind, host, labels, n, newest)
        VALUES (NEW.model, NEW.kind, {_GROUP}, 1, NEW.id)
        ON CONFLICT (model, kind, host, labels) DO UPDATE SET n = n + 1,
        newest = max(newest, excluded.newest);
    END""",
    f"""CREATE TRIGGER tasks_group_delete AFTER DELETE ON tasks
    WHEN OLD.state = 'queued' AND OLD.model IS NOT NULL BEGIN
        UPDATE queued_groups SET n = n - 1 WHERE {_OLD_GROUP};
    END""",
    f"""CREATE TRIGGER tasks_group_leave AFTER UPDATE OF state ON tasks
    WHEN OLD.state = 'queued' AND NEW.state IS NOT 'queued' AND OLD.model IS NOT NULL BEGIN
        UPDATE queued_groups SET n = n - 1 WHERE {_OLD_GROUP};
    END""",
    f"""CREATE TRIGGER tasks_group_enter AFTER UPDATE OF state ON tasks
    WHEN NEW.state = 'queued' AND OLD.state IS NOT 'queued' AND NEW.model IS NOT NULL BEGIN
        INSERT INTO queued_groups (model, kind, host, labels, n, newest)
        VALUES (NEW.model, NEW.kind, {_GROUP}, 1, NEW.id)
        ON CONFLICT (model, kind, host, labels) DO UPDATE SET n = n + 1,
        newest = max(newest, excluded.newest);
    END""",
)

# Retention (`queue/retention.py`): `tasks.pruned_at` is when a finished task's outputs (result,
# output chunks, events) and payload were pruned, so readers tell "pruned" from "no result";
# `retention_marks` keeps how far the outputs walk over `tasks_finished` has gone (the last
# (finished_at, id) pruned), so a restarted controller does not walk the pruned rows again.
RETENTION = (
    "ALTER TABLE tasks ADD COLUMN pruned_at REAL",
    """CREATE TABLE retention_marks (
        name TEXT PRIMARY KEY,
        finished_at REAL NOT NULL,
        task_id INTEGER NOT NULL
    ) WITHOUT ROWID""",
)

# A job's pace without reading its tasks: when its first task started and its last one finished,
# kept by triggers as its tasks move (`queue/pace.py`; the Jobs view reads it every second).
JOB_PACE = (
    "ALTER TABLE jobs ADD COLUMN first_started_at REAL",
    "ALTER TABLE jobs ADD COLUMN last_finished_at REAL",
    "UPDATE jobs SET first_started_at = (SELECT min(started_at) FROM tasks WHERE job_id = jobs.id),"
    " last_finished_at = (SELECT max(finished_at) FROM tasks WHERE job_id = jobs.id)",
    """CREATE TRIGGER tasks_job_started AFTER UPDATE OF state ON tasks
    WHEN NEW.state = 'running' AND NEW.job_id IS NOT NULL BEGIN
        UPDATE jobs SET first_started_at = NEW.started_at WHERE id = NEW.job_id
        AND (first_started_at IS NULL OR first_started_at > NEW.started_at);
    END""",
    """CREATE TRIGGER tasks_job_finished AFTER UPDATE OF state ON tasks
    WHEN NEW.finished_at IS NOT NULL AND NEW.job_id IS NOT NULL AND OLD.state IS NOT NEW.state
    BEGIN
        UPDATE jobs SET last_finished_at = NEW.finished_at WHERE id = NEW.job_id
        AND (last_finished_at IS NULL OR last_finished_at < NEW.finished_at);
    END""",
)

# (name, statements) in order; the position is the migration's number.
MIGRATIONS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("initial", INITIAL),
    ("hosts", HOSTS),
    ("models", MODELS),
    ("placement", PLACEMENT),
    ("model_facts", MODEL_FACTS),
    ("depth", DEPTH),
    ("retention", RETENTION),
    ("job_pace", JOB_PACE),
)
