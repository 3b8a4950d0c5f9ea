"""`plane.db`, a DbDesk: the state database itself: pruning by hand, space, stats.

The controller prunes on its own as the profile's `[retention]` says (runtime/loop.py);
`prune` here does the same at once (`bitinglip db prune`), with the profile's cut-offs or
`older_than` for both, and gives the freed pages back to the file system. A database made
before incremental vacuum gives its space back only through a full `vacuum` (`--vacuum`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bitinglip.config import Profile, RetentionConfig
from bitinglip.config_retention import retention_text
from bitinglip.control.queue.retention import Cutoffs, Pruned, Pruner
from bitinglip.control.store import space
from bitinglip.control.store.db import Store
from bitinglip.control.store.space import DbStats

NOT_INCREMENTAL = (
    "this database was made without incremental vacuum, so freed pages are reused but the file "
    "does not shrink; run `bitinglip db prune --vacuum` once (a full VACUUM: it rewrites the "
    "file and holds the queue while it runs) to give the space back and turn it on"
)


@dataclass(frozen=True)
class PruneReport:
    """What `db prune` removed (or, dry, would remove), and the file before and after."""

    dry_run: bool
    outputs_kept: str  # "7d", "forever": the retention applied to outputs
    tasks_kept: str
    pruned: Pruned
    file_bytes_before: int  # the database and its WAL
    file_bytes_after: int
    pages_given_back: int
    vacuumed: bool
    seconds: float
    auto_vacuum: str
    hint: str | None  # what to do when the file cannot shrink

    @property
    def bytes_given_back(self) -> int:
        return max(self.file_bytes_before - self.file_bytes_after, 0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "outputs_kept": self.outputs_kept,
            "tasks_kept": self.tasks_kept,
            **self.pruned.to_dict(),
            "file_bytes_before": self.file_bytes_before,
            "file_bytes_after": self.file_bytes_after,
            "bytes_given_back": self.bytes_given_back,
            "pages_given_back": self.pages_given_back,
            "vacuumed": self.vacuumed,
            "seconds": round(self.seconds, 3),
            "auto_vacuum": self.auto_vacuum,
            "hint": self.hint,
        }


class DbDesk:
    """The state database's own operations, on the plane's connection."""

    def __init__(self, profile: Profile, store: Store) -> None:
        self.profile = profile
        self.store = store

    def stats(self) -> DbStats:
        """Rows and bytes per table and index, the file with its WAL, free pages."""
        return space.stats(self.store)

    def prune(
        self,
        *,
        older_than_s: float | None = None,
        outputs_only: bool = False,
        dry_run: bool = False,
        vacuum: bool = False,
        on_batch: Callable[[Pruned], None] | None = None,
    ) -> PruneReport:
        """Prune finished tasks now: outputs and rows past the profile's `[retention]`, or
        past `older_than_s` for both (`outputs_only`: keep the rows); then give the space
        back (`vacuum`: a full VACUUM, which also turns incremental vacuum on)."""
        start = time.monotonic()
        keep = self.profile.retention
        if older_than_s is not None:
            keep = RetentionConfig(outputs=older_than_s, tasks=older_than_s)
        if outputs_only:
            keep = RetentionConfig(outputs=keep.outputs, tasks=float("inf"))
        before = sum(space.file_bytes(self.store.path))
        pruned = Pruner(self.store).prune(
            Cutoffs.of(keep, time.time()), dry_run=dry_run, on_batch=on_batch
        )
        pages = 0
        if not dry_run:
            if vacuum:
                space.vacuum(self.store)
            else:
                pages = space.give_back_all(self.store)
            space.truncate_wal(self.store)
        mode = space.auto_vacuum(self.store)
        return PruneReport(
            dry_run=dry_run,
            outputs_kept=retention_text(keep.outputs),
            tasks_kept=retention_text(keep.tasks),
            pruned=pruned,
            file_bytes_before=before,
            file_bytes_after=sum(space.file_bytes(self.store.path)),
            pages_given_back=pages,
            vacuumed=vacuum and not dry_run,
            seconds=time.monotonic() - start,
            auto_vacuum=mode,
            hint=None if mode == "incremental" else NOT_INCREMENTAL,
        )
