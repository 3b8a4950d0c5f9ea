"""The control plane's façade: the one module the front ends (CLI, console, gateway, benchmarks)
import. Never imports a front end.

- `open_control_plane(profile)` gives a `ControlPlane`: tasks and jobs are its methods, models
  `plane.models` (`ModelDesk`), hosts and telemetry `plane.fleet` (`FleetDesk`); `ControlLoop`
  runs the queue (`bitinglip up`, `serve`, an embedded command).
- The typed snapshots those calls return, and the vocabulary (`TaskKind`, `TaskState`, ...).
- Work that touches no state: the hub (search, list, resolve, ranged reads), fit planning, a
  GGUF file's metadata, profile model aliases, SSH work on a host (loads asyncssh when called),
  atomic exports and private files.

Everything below (`store/`, `queue/`, `transport/`, `models/`, `fleet/`, `runtime/`) is the
control plane's own: an import-linter contract keeps front ends out of it. See
docs/ARCHITECTURE.md.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from bitinglip_agent.protocol import PULL_KINDS, SERVE_KINDS

from bitinglip.control.fleet.hosts import NO_PYNVML, SIGNALS
from bitinglip.control.fleet.telemetry_ring import HOST_ROW, gpu_table
from bitinglip.control.fleet.telemetry_views import FleetReader, FleetTelemetry, History
from bitinglip.control.fleet.views import HostModel, HostTask
from bitinglip.control.models.aliases import LocalModel, check_name, ensure_local, models_dir
from bitinglip.control.models.aliases import resolve as resolve_local
from bitinglip.control.models.fit import (
    GIB,
    Device,
    Fit,
    Need,
    Verdict,
    needs_for_files,
)
from bitinglip.control.models.fit import plan as plan_fit
from bitinglip.control.models.gguf_meta import GGUFMeta
from bitinglip.control.models.gguf_meta import read_local as gguf_meta_of_file
from bitinglip.control.models.gguf_meta import read_remote as gguf_meta_of_hub_file
from bitinglip.control.models.hub import download_bare, list_gguf, read_range
from bitinglip.control.models.hub import resolve as resolve_ref
from bitinglip.control.models.hub import search as search_hub
from bitinglip.control.models.pulls import Ticket
from bitinglip.control.models.refs import HubFile, RepoSummary, parse_quant, short_name, split_ref
from bitinglip.control.models.refs import endpoint as hub_endpoint
from bitinglip.control.models.registry import CopyState
from bitinglip.control.models.registry import hub_file as hub_file_of_row
from bitinglip.control.models.settings import parse_duration
from bitinglip.control.plane import ControlPlane, open_control_plane, use_hub_token
from bitinglip.control.plane_db import DbDesk, PruneReport
from bitinglip.control.plane_fleet import (
    LOADED_COLUMNS,
    FleetDesk,
    LoadedModel,
    LoadedReport,
    Replicas,
    agent_log,
    changed_key_error,
    check_host,
    host_key,
    record_host_key,
    setup_host,
)
from bitinglip.control.plane_metrics import PlaneMetrics
from bitinglip.control.plane_models import ModelDesk, read_need
from bitinglip.control.queue.filter import SORTS, TaskFilter, TaskPage, TaskRow
from bitinglip.control.queue.filter import parse_filter as parse_task_filter
from bitinglip.control.queue.follow import FollowMark, FollowStep
from bitinglip.control.queue.jobs import Job
from bitinglip.control.queue.keyset import WINDOW as TASK_WINDOW
from bitinglip.control.queue.keyset import Cursor
from bitinglip.control.queue.pace import JobPace
from bitinglip.control.queue.retention import Pruned
from bitinglip.control.queue.tasks import KINDS, TERMINAL, TaskKind, TaskSpec, TaskState
from bitinglip.control.queue.usage import QueueUsage
from bitinglip.control.queue.views import Task, TaskListing
from bitinglip.control.queue.watch import WatchMark, WatchStep
from bitinglip.control.runtime.controller import ControllerInfo
from bitinglip.control.runtime.loop import ControlLoop
from bitinglip.control.store.atomic_file import write_lines
from bitinglip.control.store.data_dir import ensure as ensure_private_dir
from bitinglip.control.store.data_dir import open_private
from bitinglip.control.store.space import DbStats, TableSpace

if TYPE_CHECKING:  # their modules load asyncssh: imported on first use (`__getattr__`)
    from bitinglip.control.fleet.checks import CheckReport, HostKey
    from bitinglip.control.transport.bootstrap import SetupReport

_LAZY = {
    "CheckReport": "bitinglip.control.fleet.checks",
    "HostKey": "bitinglip.control.fleet.checks",
    "SetupReport": "bitinglip.control.transport.bootstrap",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "GIB",
    "HOST_ROW",
    "KINDS",
    "LOADED_COLUMNS",
    "NO_PYNVML",
    "PULL_KINDS",
    "SERVE_KINDS",
    "SIGNALS",
    "SORTS",
    "TASK_WINDOW",
    "TERMINAL",
    "CheckReport",
    "ControlLoop",
    "ControlPlane",
    "ControllerInfo",
    "CopyState",
    "Cursor",
    "DbDesk",
    "DbStats",
    "Device",
    "Fit",
    "FleetDesk",
    "FleetReader",
    "FleetTelemetry",
    "FollowMark",
    "FollowStep",
    "GGUFMeta",
    "History",
    "HostKey",
    "HostModel",
    "HostTask",
    "HubFile",
    "Job",
    "JobPace",
    "LoadedModel",
    "LoadedReport",
    "LocalModel",
    "ModelDesk",
    "Need",
    "PlaneMetrics",
    "PruneReport",
    "Pruned",
    "QueueUsage",
    "Replicas",
    "RepoSummary",
    "SetupReport",
    "TableSpace",
    "Task",
    "TaskFilter",
    "TaskKind",
    "TaskListing",
    "TaskPage",
    "TaskRow",
    "TaskSpec",
    "TaskState",
    "Ticket",
    "Verdict",
    "WatchMark",
    "WatchStep",
    "agent_log",
    "changed_key_error",
    "check_host",
    "check_name",
    "download_bare",
    "ensure_local",
    "ensure_private_dir",
    "gguf_meta_of_file",
    "gguf_meta_of_hub_file",
    "gpu_table",
    "host_key",
    "hub_endpoint",
    "hub_file_of_row",
    "list_gguf",
    "models_dir",
    "needs_for_files",
    "open_control_plane",
    "open_private",
    "parse_duration",
    "parse_quant",
    "parse_task_filter",
    "plan_fit",
    "read_need",
    "read_range",
    "record_host_key",
    "resolve_local",
    "resolve_ref",
    "search_hub",
    "setup_host",
    "short_name",
    "split_ref",
    "use_hub_token",
    "write_lines",
]
