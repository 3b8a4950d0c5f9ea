"""The state database's space: what each table takes, and giving free pages back.

A database made by this version has `auto_vacuum = INCREMENTAL` (set in `db._create` before the
first table): pages freed by retention go to SQLite's free list, and `give_back` returns them
to the file system a bounded number of pages per write transaction (`PRAGMA
incremental_vacuum(N)` moves pages from the end of the file into the holes, then truncates), so
the queue waits for one step at most. A database made before has `auto_vacuum = NONE`: its free
pages are reused by new rows but the file never shrinks until one full `vacuum` (which also
turns incremental vacuum on); that rewrites the whole file and holds the write lock while it
runs.

`stats` reads every page through the `dbstat` virtual table when this SQLite has it (rows and
bytes per table and index), else counts rows per table and gives page totals only.
"""

from __future__ import annotations

import sqlite3
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bitinglip.control.store.db import Store

GIVE_BACK_PAGES = 512  # pages per incremental_vacuum step (2 MiB): ~20-45 ms of lock at 1M tasks
AUTO_VACUUM = {0: "none", 1: "full", 2: "incremental"}


@dataclass(frozen=True)
class TableSpace:
    """One b-tree: a table or an index (`table` names the table an index belongs to)."""

    name: str
    kind: str  # "table" or "index"
    table: str
    rows: int | None  # entries in the b-tree (rows of a table)
    bytes: int | None  # pages x page size; None without dbstat


@dataclass(frozen=True)
class DbStats:
    path: str
    file_bytes: int  # state.db
    wal_bytes: int  # state.db-wal
    page_size: int
    page_count: int
    freelist_pages: int
    auto_vacuum: str  # "none", "full" or "incremental"
    source: str  # "dbstat" or "count" (no per-table bytes)
    tables: tuple[TableSpace, ...]

    @property
    def free_bytes(self) -> int:
        return self.freelist_pages * self.page_size

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        return data | {"free_bytes": self.free_bytes, "tables": [asdict(t) for t in self.tables]}


def file_bytes(path: Path) -> tuple[int, int]:
    """The sizes of the database file and its WAL (0 when there is none)."""

    def size(p: Path) -> int:
        try:
            return p.stat().st_size
        except FileNotFoundError:
            return 0

    return size(path), size(Path(f"{path}-wal"))


def pragma(store: Store, name: str) -> int:
    return int(store.conn.execute(f"PRAGMA {name}").fetchone()[0])


def auto_vacuum(store: Store) -> str:
    return AUTO_VACUUM.get(pragma(store, "auto_vacuum"), "unknown")


def stats(store: Store) -> DbStats:
    """Rows and bytes per table and index, the file's size with its WAL, its free pages."""
    with store.read() as conn:
        trees = conn.execute(
            "SELECT name, type, tbl_name, sql FROM sqlite_schema"
            " WHERE type IN ('table', 'index') ORDER BY name"
        ).fetchall()
        try:
            tables = _dbstat(conn, trees)
            source = "dbstat"
        except sqlite3.OperationalError:  # built without SQLITE_ENABLE_DBSTAT_VTAB
            tables = _counts(conn, trees)
            source = "count"
        page_size, page_count = pragma(store, "page_size"), pragma(store, "page_count")
        free = pragma(store, "freelist_count")
    main, wal = file_bytes(store.path)
    return DbStats(
        path=str(store.path),
        file_bytes=main,
        wal_bytes=wal,
        page_size=page_size,
        page_count=page_count,
        freelist_pages=free,
        auto_vacuum=auto_vacuum(store),
        source=source,
        tables=tuple(sorted(tables, key=lambda t: (-(t.bytes or 0), t.name))),
    )


def _dbstat(
    conn: sqlite3.Connection, trees: list[tuple[str, str, str, str | None]]
) -> list[TableSpace]:
    """One pass over every page: a rowid table's rows are its leaf cells; an index's (and a
    WITHOUT ROWID table's) entries are in its interior pages too."""
    found = {
        name: (leaf, interior, size)
        for name, leaf, interior, size in conn.execute(
            "SELECT name, sum(CASE WHEN pagetype = 'leaf' THEN ncell ELSE 0 END),"
            " sum(CASE WHEN pagetype = 'internal' THEN ncell ELSE 0 END), sum(pgsize)"
            " FROM dbstat GROUP BY name"
        )
    }
    spaces = []
    for name, kind, table, sql in trees:
        if name not in found:
            continue  # a virtual table, or an index of one
        leaf, interior, size = found[name]
        rowid = kind == "table" and "WITHOUT ROWID" not in (sql or "").upper()
        rows = leaf if rowid else leaf + interior
        spaces.append(TableSpace(name, kind, table, int(rows), int(size)))
    return spaces


def _counts(
    conn: sqlite3.Connection, trees: list[tuple[str, str, str, str | None]]
) -> list[TableSpace]:
    return [
        TableSpace(
            name, "table", name, conn.execute(f'SELECT count(*) FROM "{name}"').fetchone()[0], None
        )
        for name, kind, _, _ in trees
        if kind == "table"
    ]


def give_back(store: Store, pages: int = GIVE_BACK_PAGES) -> int:
    """Return up to `pages` free pages to the file system in one write transaction (only with
    incremental auto_vacuum); returns how many went."""
    if pragma(store, "auto_vacuum") != 2 or pragma(store, "freelist_count") == 0:
        return 0
    before = pragma(store, "freelist_count")
    # As a script: the pragma frees a page per step, and only a script steps it to the end
    # (sqlite3's execute stops after one step of a statement with no columns).
    try:
        script = f"BEGIN IMMEDIATE; PRAGMA incremental_vacuum({int(pages)}); COMMIT;"
        store.conn.executescript(script)
    except sqlite3.Error:
        if store.conn.in_transaction:
            store.conn.execute("ROLLBACK")
        raise
    return before - pragma(store, "freelist_count")


def give_back_all(store: Store, pages: int = GIVE_BACK_PAGES) -> int:
    """Every free page back, a step at a time (other writers get the lock between steps)."""
    total = 0
    while step := give_back(store, pages):
        total += step
    return total


def vacuum(store: Store) -> None:
    """A full VACUUM that also turns incremental auto_vacuum on: rewrites the whole file,
    holding the write lock throughout. Its temporary copy goes to a file (the connection
    keeps temp tables in memory otherwise)."""
    conn = store.conn
    conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
    conn.execute("PRAGMA temp_store = FILE")
    try:
        store.write_one("VACUUM", ())  # waits for the write lock as every writer does
    finally:
        conn.execute("PRAGMA temp_store = MEMORY")


def truncate_wal(store: Store) -> None:
    """Checkpoint the WAL and cut it to zero bytes (when no reader holds it back)."""
    store.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
