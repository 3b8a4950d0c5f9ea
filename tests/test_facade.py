"""Front ends (CLI, console, gateway, benchmarks) talk to the control plane only through its
façade, the `bitinglip.control` package: no import below it, no `plane.store`, no SQL.

import-linter checks the imports too (the "front ends import only the façade" contract in
pyproject.toml); this test says which module broke the rule, and also catches attribute and SQL
reach-arounds that an import graph cannot see.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FRONT_ENDS = ("cli", "tui", "gateway", "bench")
FACADE = "bitinglip.control"

# Benchmarks whose subject is one part itself, measured without the rest (the queue's claim and
# complete, a session over a pipe or SSH, the raw asyncssh baseline, the telemetry writes the
# console bench replays). The same exceptions are in the import-linter contract.
MEASURED = {
    "bitinglip.bench.queue": {"bitinglip.control.queue.tasks", "bitinglip.control.store.db"},
    "bitinglip.bench.host_link": {"bitinglip.control.transport.sessions"},
    "bitinglip.bench.echo_rate": {"bitinglip.control.transport.ssh.commands"},
    "bitinglip.bench.fleet": {
        "bitinglip.control.transport",
        "bitinglip.control.transport.local",
        "bitinglip.control.transport.remote",
        "bitinglip.control.transport.sessions",
    },
    "bitinglip.bench.fleet_telemetry": {
        "bitinglip.control.fleet",
        "bitinglip.control.fleet.telemetry_ring",
        "bitinglip.control.store.db",
    },
    "bitinglip.bench.growth_fill": {"bitinglip.control.store.db"},
}
# bench/queue.py's baseline is a bare table in a database of its own, not the product's state;
# bench/growth_fill.py writes a million finished generations as the queue would have (no
# benchmark machine can run them).
RAW_SQL_BASELINE = {"bitinglip.bench.queue", "bitinglip.bench.growth_fill"}
STORE_REACH = re.compile(r"\bplane\.(store|queue)\b|\.conn\.execute\(")
SQL = re.compile(
    r"\b(SELECT\b.+\bFROM|INSERT\s+INTO|UPDATE\s+\w+\s+SET|DELETE\s+FROM)\b"
    r"|[\"'](SELECT|WITH|INSERT|UPDATE|DELETE|PRAGMA)\s"
)


def front_end_modules() -> dict[str, Path]:
    found = {}
    for part in FRONT_ENDS:
        for path in sorted((ROOT / "bitinglip" / part).rglob("*.py")):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            found[name.removesuffix(".__init__")] = path
    return found


def control_imports(source: str) -> set[str]:
    """Every `bitinglip.control...` module a source file imports (at any depth in the file)."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        found |= {n for n in names if n == FACADE or n.startswith(FACADE + ".")}
    return found


def internals(module: str, source: str) -> set[str]:
    return control_imports(source) - {FACADE} - MEASURED.get(module, set())


def test_the_checks_see_a_reach_around() -> None:
    source = (
        "from bitinglip.control import ControlPlane\n"
        "def f(plane):\n"
        "    from bitinglip.control.store.db import Store\n"
        "    return plane.store.conn.execute('SELECT id FROM tasks')\n"
    )
    assert internals("bitinglip.cli.x", source) == {"bitinglip.control.store.db"}
    assert STORE_REACH.search(source) and SQL.search(source)


def test_front_ends_import_only_the_facade() -> None:
    broken = {
        module: sorted(found)
        for module, path in front_end_modules().items()
        if (found := internals(module, path.read_text()))
    }
    assert not broken, f"front-end modules importing control internals: {broken}"


def test_front_ends_never_reach_the_store_or_run_sql() -> None:
    broken = []
    for module, path in front_end_modules().items():
        for number, line in enumerate(path.read_text().splitlines(), 1):
            sql = SQL.search(line) and module not in RAW_SQL_BASELINE
            if STORE_REACH.search(line) or sql:
                broken.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not broken, "\n".join(broken)
